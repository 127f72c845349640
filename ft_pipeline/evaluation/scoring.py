"""Evaluate models on the holdout: batched greedy generation, structured-output and free-text metrics, holdout
loss, and the per-example comparison with the champion."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ft_pipeline.evaluation.text_metrics import chrf, rouge_l


def prompt_messages(record: dict) -> list[dict]:
    """Everything before the final assistant turn: what the model is asked."""
    return [{"role": m["role"], "content": m["content"]} for m in record["messages"][:-1]]


def reference(record: dict) -> str:
    return record["messages"][-1]["content"]


def chat_prompt_ids(tok, conversations: list[list[dict]]) -> list[list[int]]:
    """The token ids of each conversation as the model is prompted with it: its chat template with the
    assistant's generation prompt appended (the template already holds any special tokens)."""
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def left_padded(enc: list[list[int]], pad: int):
    """(input_ids, attention_mask) of a batch, left-padded to its longest row so every row ends where
    generation starts."""
    import torch

    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for row, e in enumerate(enc):
        ids[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
        mask[row, width - len(e):] = 1
    return ids, mask


def generate(model, tok, conversations: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 64,
             details: bool = False, progress: Callable[[int, int], None] | None = None, grammars=None,
             response_format=None):
    """Greedy completions, batched with left padding; batches hold prompts of similar length. Generation stops
    at the end-of-turn (eos) token. With `details`, also (new tokens, stopped by itself) per completion.
    `progress(done, total)` is called after each batch with the number of completions done. A constrained
    `response_format` (structured.formats.ResponseFormat) is enforced on every answer with `grammars`
    (structured.grammar.Grammars of `tok`)."""
    import torch

    enc = chat_prompt_ids(tok, conversations)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    outputs: list[str] = [""] * len(enc)
    info: list[tuple[int, bool]] = [(0, False)] * len(enc)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_padded([enc[i] for i in idx], pad_id(tok))
        width = ids.shape[1]
        processors = None
        if response_format is not None and response_format.constrained:
            from ft_pipeline.structured.grammar import GrammarMask

            processors = [GrammarMask([grammars.matcher(response_format) for _ in idx], tok.eos_token_id)]
        with torch.inference_mode():
            out = _greedy(model, tok, ids, mask, max_new_tokens, processors=processors)
        _read_answers(tok, out, width, idx, outputs, info)
        if progress is not None:
            progress(start + len(idx), len(order))
    return (outputs, info) if details else outputs


def _greedy(model, tok, ids, mask, max_new_tokens: int, cache=None, processors=None):
    from transformers import LogitsProcessorList

    pad = pad_id(tok)
    return model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                          eos_token_id=tok.eos_token_id, past_key_values=cache,
                          logits_processor=LogitsProcessorList(processors or []))


def _read_answers(tok, out, width: int, idx: list[int], outputs: list[str], info: list[tuple[int, bool]]) -> None:
    """Each row's new tokens up to and including its first end-of-turn token, decoded, into outputs and info."""
    for row, i in enumerate(idx):
        new = out[row, width:].tolist()
        stop = new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else None
        info[i] = (stop or len(new), stop is not None)
        outputs[i] = tok.decode(new[:stop], skip_special_tokens=True).strip()


def reference_ids(tok, record: dict, prompt_ids: list[int]) -> list[int]:
    """The token ids of a record's reference answer as they follow its prompt (`prompt_ids`): the tail of the
    whole conversation's tokens when those begin with the prompt's, else the tokens of the text after the
    prompt's text. A template that renders the earlier turns differently once the answer is there has no such
    tail: that is an error, not a loss computed on the wrong tokens."""
    messages = [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    full = tok.apply_chat_template(messages, tokenize=False)
    ids = tok(full, add_special_tokens=False)["input_ids"]
    if ids[:len(prompt_ids)] == prompt_ids:
        return ids[len(prompt_ids):]
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders a conversation's prompt differently once the answer follows "
                         f"it, so the reference answer cannot be scored as a continuation of the prompt: {prompt!r}")
    return tok(full[len(prompt):], add_special_tokens=False)["input_ids"]


def answer_and_score(model, tok, records: list[dict], max_new_tokens: int = 128, batch_size: int = 64,
                     progress: Callable[[int, int], None] | None = None, response_format=None, grammars=None):
    """For each record: its greedy answer, (new tokens, stopped by itself) as `generate` gives them, and (summed
    NLL, token count) of its reference answer given the prompt.

    One forward pass per batch does both the reference's loss and the prompt's prefill. The batch is laid out
    as left-padded prompts (all ending in one column, as generation needs) followed by the references; the loss
    is read at the reference positions, and the key/value cache, cropped back to the prompts but their last
    token, starts generation, which then runs only that token before decoding. Scoring the references in a pass
    of their own ran every prompt through the model twice: on the demo holdout with SmolLM2 a prompt is ~65
    tokens and a reference ~42, so that pass cost more than half again of the prefill. A constrained
    `response_format` (with `grammars`) masks every generated token, as in `generate`."""
    import torch

    prompts = chat_prompt_ids(tok, [prompt_messages(r) for r in records])
    tails = [reference_ids(tok, r, p) for r, p in zip(records, prompts, strict=True)]
    order = sorted(range(len(records)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(records)
    info: list[tuple[int, bool]] = [(0, False)] * len(records)
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(records)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_padded([prompts[i] for i in idx], pad_id(tok))
        width, answer_width = ids.shape[1], max(len(tails[i]) for i in idx)
        both = torch.cat([ids, torch.full((len(idx), answer_width), pad_id(tok), dtype=torch.long)], dim=1)
        both_mask = torch.cat([mask, torch.zeros((len(idx), answer_width), dtype=torch.long)], dim=1)
        for row, i in enumerate(idx):
            both[row, width:width + len(tails[i])] = torch.tensor(tails[i], dtype=torch.long)
            both_mask[row, width:width + len(tails[i])] = 1
        positions = (both_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from its first token
        with torch.inference_mode():
            out = model(input_ids=both.to(model.device), attention_mask=both_mask.to(model.device),
                        position_ids=positions.to(model.device), use_cache=True,
                        logits_to_keep=torch.arange(width - 1, width + answer_width - 1).to(model.device))
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            nll = -logp.gather(-1, both[:, width:].to(model.device).unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(idx):
                losses[i] = (float(nll[row, :len(tails[i])].sum()), len(tails[i]))
            cache = out.past_key_values
            del out, logp, nll  # the logits (batch x answer width x vocabulary) are not needed while generating
            cache.crop(-(answer_width + 1))  # keep the prompts but their last token: generation runs that one
            processors = None
            if response_format is not None and response_format.constrained:
                from ft_pipeline.structured.grammar import GrammarMask

                processors = [GrammarMask([grammars.matcher(response_format) for _ in idx], tok.eos_token_id)]
            generated = _greedy(model, tok, ids, mask, max_new_tokens, cache, processors=processors)
        _read_answers(tok, generated, width, idx, outputs, info)
        if progress is not None:
            progress(start + len(idx), len(order))
    return outputs, info, losses


def answer_budget(tok, records: list[dict], cap: int, margin: int = 8) -> int:
    """max_new_tokens for `records`: the longest reference answer in tokens (plus its end-of-turn token and a
    margin), never above `cap`, so a model that rambles does not run every batch to the cap."""
    longest = max((len(tok(reference(r), add_special_tokens=False)["input_ids"]) for r in records), default=0)
    return max(1, min(cap, longest + 1 + margin))


def _parse_object(text: str):
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Scores:
    json_valid: float
    field_accuracy: float
    exact_match: float
    chrf: float
    rouge_l: float
    per_example: list[dict]

    def metrics(self) -> dict:
        return {"json_valid": self.json_valid, "field_accuracy": self.field_accuracy, "exact_match": self.exact_match,
                "chrf": self.chrf, "rouge_l": self.rouge_l}


def score(predictions: list[str], references: list[str]) -> Scores:
    """JSON validity (prediction parses as a JSON object), field accuracy (share of the reference's fields the
    prediction gets exactly right) and exact match (same object, or the same string when the reference is not
    JSON); for free text, chrF (0-100) and ROUGE-L F1 (0-1), each the mean of the per-example scores."""
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        p, r = _parse_object(pred), _parse_object(ref)
        if r is not None:
            fields = sum(1 for k, v in r.items() if p is not None and k in p and p[k] == v) / max(len(r), 1)
            exact = p == r
        else:
            fields, exact = float(pred.strip() == ref.strip()), pred.strip() == ref.strip()
        rows.append({"prediction": pred, "reference": ref, "json_valid": p is not None,
                     "field_accuracy": fields, "exact_match": bool(exact),
                     "chrf": chrf(pred, ref), "rouge_l": rouge_l(pred, ref)})
    n = max(len(rows), 1)
    mean = lambda k: sum(r[k] for r in rows) / n  # noqa: E731
    return Scores(json_valid=mean("json_valid"), field_accuracy=mean("field_accuracy"),
                  exact_match=mean("exact_match"), chrf=mean("chrf"), rouge_l=mean("rouge_l"), per_example=rows)


def evaluate(model, tok, records: list[dict], max_new_tokens: int = 128, batch_size: int = 64,
             cache=None, progress: Callable[[int, int], None] | None = None, response_format=None,
             grammars: Callable | None = None) -> dict:
    """All metrics of one model on `records`, plus its predictions. `model` may be a callable returning
    (model, tokenizer): it is only called when some record is not in `cache` (an EvalCache). `progress(done,
    total)` follows the answers generated (those not in the cache). A constrained `response_format` needs
    `grammars(model, tok)`, returning the structured.grammar.Grammars to decode under.

    Each answer is stored with its prompt's length in tokens and its share of the measured generation time
    (the wall time of all answers generated in this call over their number), so a cached answer keeps the cost
    it had: the per-example rows carry `prompt_tokens` and `seconds` (None for an answer cached before they
    were recorded), and `finished` (False when the token limit cut the answer)."""
    from ft_pipeline.evaluation.cache import EvalCache

    cache = cache if cache is not None else EvalCache(None, None)
    todo = [r for r in records if cache.get(r, max_new_tokens) is None]
    if todo:
        if callable(model) and not hasattr(model, "generate"):
            model, tok = model()
        lengths = [len(p) for p in chat_prompt_ids(tok, [prompt_messages(r) for r in todo])]
        constrained = response_format is not None and response_format.constrained
        t0 = time.perf_counter()
        preds, info, losses = answer_and_score(model, tok, todo, max_new_tokens, batch_size, progress=progress,
                                               response_format=response_format,
                                               grammars=grammars(model, tok) if constrained else None)
        each = (time.perf_counter() - t0) / len(todo)
        for r, p, (n_new, finished), (nll, n), length in zip(todo, preds, info, losses, lengths, strict=True):
            cache.put(r, p, n_new, finished, max_new_tokens, nll, n, seconds=each, prompt_tokens=length)
        cache.flush()
    entries = [cache.get(r, max_new_tokens) for r in records]
    s = score([e["prediction"] for e in entries], [reference(r) for r in records])
    for row, e in zip(s.per_example, entries, strict=True):
        row["prompt_tokens"], row["seconds"] = e.get("prompt_tokens"), e.get("seconds")
        row["finished"] = e["finished"]  # False: the token limit cut the answer
    loss = sum(e["nll_sum"] for e in entries) / max(sum(e["n_tokens"] for e in entries), 1)
    return {"metrics": {**s.metrics(), "holdout_loss": loss, "perplexity": math.exp(min(loss, 50))},
            "per_example": s.per_example, "generated": len(todo)}


@contextmanager
def merged(model):
    """While inside, the model's active LoRA adapter is folded into the base weights (PEFT's `merge_adapter`) and
    taken out again after: generating and scoring then cost what the base model costs, without two low-rank
    matmuls beside every linear layer at every token (SmolLM2, 128 holdout answers: 63.5 s merged against 82.3 s,
    the same answers). The base weights are put back bit for bit afterwards (a copy, not the float subtraction
    of `unmerge_adapter`, which leaves the base a rounding error away from itself). A model with no adapter to
    merge is used as it is. Inside, the model must not `disable_adapter()` (PEFT would unmerge it for good)."""
    if not hasattr(model, "merge_adapter"):
        yield model
        return
    import torch
    from peft.tuners.lora import LoraLayer

    weights = [m.get_base_layer().weight for m in model.modules() if isinstance(m, LoraLayer)]
    saved = [w.detach().clone() for w in weights]
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for w, original in zip(weights, saved, strict=True):
                w.copy_(original)


def is_full_model(model_dir: Path | str) -> bool:
    """True when `model_dir` holds a whole model (a full fine-tune) rather than a PEFT adapter."""
    d = Path(model_dir)
    return not (d / "adapter_config.json").exists() and (d / "config.json").exists()


def load_tokenizer(model_dir: Path | str, trust_remote_code: bool = False):
    """The tokenizer saved with a model or adapter (it carries the chat template the model was trained with)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tuned(base_dir: Path | str, adapter_dir: Path | str, trust_remote_code: bool = False):
    """The tuned model and its tokenizer: the base (a local directory or a Hub id) wrapped in a PeftModel with
    the adapter, or, for a full fine-tune, the model in `adapter_dir` itself."""
    from ft_pipeline.model.base_models import load_model_and_tokenizer

    if is_full_model(adapter_dir):
        model, tok = load_model_and_tokenizer(adapter_dir, trust_remote_code=trust_remote_code)
        return model.eval(), tok
    from peft import PeftModel

    base, _ = load_model_and_tokenizer(base_dir, trust_remote_code=trust_remote_code)
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), load_tokenizer(adapter_dir, trust_remote_code)


# An example counts as better or worse than the champion on these, compared in this order.
DIFF_KEYS = ("field_accuracy", "exact_match", "chrf")


def champion_diff(records: list[dict], tuned: list[dict], champion: list[dict]) -> dict:
    """Per holdout example, whether the tuned model did better or worse than the champion: the per-example
    (field accuracy, exact match, chrF) tuples are compared in that order, so chrF only decides between
    answers that are equally right field by field."""
    rows = []
    for i, (rec, t, c) in enumerate(zip(records, tuned, champion, strict=True)):
        kt, kc = tuple(float(t[k]) for k in DIFF_KEYS), tuple(float(c[k]) for k in DIFF_KEYS)
        change = "better" if kt > kc else "worse" if kt < kc else "same"
        rows.append({"index": i, "id": rec.get("id", ""), "change": change,
                     "prompt": prompt_messages(rec)[-1]["content"], "reference": reference(rec),
                     "champion": c["prediction"], "tuned": t["prediction"],
                     **{f"champion_{k}": float(c[k]) for k in DIFF_KEYS},
                     **{f"tuned_{k}": float(t[k]) for k in DIFF_KEYS}})
    counts = {k: sum(r["change"] == k for r in rows) for k in ("better", "worse", "same")}
    return {"counts": counts, "rows": rows}


GATE_METRICS = ("field_accuracy", "exact_match", "chrf", "rouge_l")


def gate_failures(metrics: dict[str, dict], min_json_valid: float, min_gain_over_base: float,
                  max_loss_vs_champion: float, metric: str = "field_accuracy", retention_kl: float | None = None,
                  max_retention_kl: float | None = None) -> list[str]:
    """Why the tuned model may not become champion; empty when it may. `metrics` holds base, tuned and
    (when there is one) champion. `metric` is what must beat the base and hold against the champion (margins in
    its own units: chrf is 0-100, the others 0-1)."""
    if metric not in GATE_METRICS:
        raise ValueError(f"gate metric {metric!r} is not one of {', '.join(GATE_METRICS)}")
    tuned, base, champ = metrics["tuned"], metrics["base"], metrics.get("champion")
    out = []
    if tuned["json_valid"] < min_json_valid:
        out.append(f"JSON validity {tuned['json_valid']:.3f} < {min_json_valid}")
    name = metric.replace("_", " ")
    if tuned[metric] < base[metric] + min_gain_over_base:
        out.append(f"{name} {tuned[metric]:.3f} does not beat the base model's {base[metric]:.3f} "
                   f"by {min_gain_over_base}")
    if champ and tuned[metric] < champ[metric] - max_loss_vs_champion:
        out.append(f"{name} {tuned[metric]:.3f} is below the champion's {champ[metric]:.3f}")
    if max_retention_kl is not None:
        if retention_kl is None:
            out.append("max_retention_kl is set, but the retention check did not run (a full fine-tune, or "
                       "retention_prompts: 0)")
        elif retention_kl > max_retention_kl:
            out.append(f"retention KL {retention_kl:.4f} > {max_retention_kl}: the tuned model drifted too far "
                       "from the base on general prompts")
    return out


CANDIDATES = ("best", "dpo")  # the gate's `candidate` knob: how pick_candidate chooses


def pick_candidate(metrics: dict[str, dict], metric: str, compare_champion: bool = True,
                   candidate: str = "best") -> tuple[str, str]:
    """Which model goes to the gate, and why: with `candidate` best, the DPO model only if it beats both the SFT
    model ("tuned") and the champion on the gate metric, otherwise the SFT model, as without preference tuning;
    with `candidate` dpo, the DPO model whenever there is one (what a DPO fine-tuning job returns)."""
    if "dpo" not in metrics:
        return "tuned", "no DPO model"
    if candidate == "dpo":
        dpo, sft = metrics["dpo"][metric], metrics["tuned"][metric]
        return "dpo", f"candidate: dpo (DPO {metric} {dpo:.3f}, SFT's {sft:.3f})"
    dpo, sft, champ = (metrics["dpo"][metric], metrics["tuned"][metric],
                       metrics.get("champion") if compare_champion else None)
    if dpo <= sft:
        return "tuned", f"DPO {metric} {dpo:.3f} does not beat SFT's {sft:.3f}"
    if champ is not None and dpo <= champ[metric]:
        return "tuned", f"DPO {metric} {dpo:.3f} does not beat the champion's {champ[metric]:.3f}"
    return "dpo", f"DPO {metric} {dpo:.3f} beats SFT's {sft:.3f}" + (
        f" and the champion's {champ[metric]:.3f}" if champ is not None else "")
