"""Evaluate models on the holdout: batched greedy generation, structured-output metrics and holdout loss."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


def prompt_messages(record: dict) -> list[dict]:
    """Everything before the final assistant turn: what the model is asked."""
    return [{"role": m["role"], "content": m["content"]} for m in record["messages"][:-1]]


def reference(record: dict) -> str:
    return record["messages"][-1]["content"]


def generate(model, tok, conversations: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 64) -> list[str]:
    """Greedy completions, batched with left padding; batches hold prompts of similar length."""
    import torch

    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    outputs: list[str] = [""] * len(enc)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(enc[i]):] = torch.tensor(enc[i])
            mask[row, width - len(enc[i]):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                 eos_token_id=tok.eos_token_id)
        for row, i in enumerate(idx):
            outputs[i] = tok.decode(out[row, width:], skip_special_tokens=True).strip()
    return outputs


def holdout_loss(model, tok, records: list[dict], batch_size: int = 32) -> float:
    """Mean token negative log-likelihood of the final assistant turn given the conversation before it."""
    import torch

    pairs = []
    for r in records:
        prompt = tok.apply_chat_template(prompt_messages(r), tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in r["messages"]],
                                       tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        pairs.append((f_ids, len(p_ids)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(f) for f, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (f, n_prompt) in enumerate(chunk):
            ids[row, :len(f)] = torch.tensor(f)
            mask[row, :len(f)] = 1
            labels[row, n_prompt:len(f)] = torch.tensor(f[n_prompt:])
        with torch.inference_mode():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        tgt = labels[:, 1:].to(model.device)
        valid = tgt != -100
        nll = -logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += float(nll[valid].sum())
        count += int(valid.sum())
    return total / max(count, 1)


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
    per_example: list[dict]

    def metrics(self) -> dict:
        return {"json_valid": self.json_valid, "field_accuracy": self.field_accuracy, "exact_match": self.exact_match}


def score(predictions: list[str], references: list[str]) -> Scores:
    """JSON validity (prediction parses as a JSON object), field accuracy (share of the reference's fields the
    prediction gets exactly right) and exact match (same object, or the same string when the reference is not
    JSON)."""
    rows = []
    for pred, ref in zip(predictions, references, strict=True):
        p, r = _parse_object(pred), _parse_object(ref)
        if r is not None:
            fields = sum(1 for k, v in r.items() if p is not None and k in p and p[k] == v) / max(len(r), 1)
            exact = p == r
        else:
            fields, exact = float(pred.strip() == ref.strip()), pred.strip() == ref.strip()
        rows.append({"prediction": pred, "reference": ref, "json_valid": p is not None,
                     "field_accuracy": fields, "exact_match": bool(exact)})
    n = max(len(rows), 1)
    return Scores(json_valid=sum(r["json_valid"] for r in rows) / n,
                  field_accuracy=sum(r["field_accuracy"] for r in rows) / n,
                  exact_match=sum(r["exact_match"] for r in rows) / n, per_example=rows)


def evaluate(model, tok, records: list[dict], max_new_tokens: int = 128, batch_size: int = 64) -> dict:
    """All metrics of one model on `records`, plus its predictions."""
    preds = generate(model, tok, [prompt_messages(r) for r in records], max_new_tokens, batch_size)
    s = score(preds, [reference(r) for r in records])
    loss = holdout_loss(model, tok, records)
    return {"metrics": {**s.metrics(), "holdout_loss": loss, "perplexity": math.exp(min(loss, 50))},
            "per_example": s.per_example}


def markdown_report(results: dict[str, dict], n_examples: int, samples: list[dict]) -> str:
    """A report a person reads in the Dagster UI: metrics side by side, then a few holdout samples."""
    names = list(results)
    keys = ["json_valid", "field_accuracy", "exact_match", "holdout_loss", "perplexity"]
    lines = [f"## Evaluation on {n_examples} holdout examples", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{results[n]['metrics'][k]:.3f}" for n in names) + " |")
    lines += ["", "### Samples", "", "| prompt | reference | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")[:160]  # noqa: E731
    for s in samples:
        lines.append(f"| {esc(s['prompt'])} | {esc(s['reference'])} | "
                     + " | ".join(esc(s[n]) for n in names) + " |")
    return "\n".join(lines)


def gate_failures(metrics: dict[str, dict], min_json_valid: float, min_gain_over_base: float,
                  max_loss_vs_champion: float) -> list[str]:
    """Why the tuned model may not become champion; empty when it may. `metrics` holds base, tuned and
    (when there is one) champion."""
    tuned, base, champ = metrics["tuned"], metrics["base"], metrics.get("champion")
    out = []
    if tuned["json_valid"] < min_json_valid:
        out.append(f"JSON validity {tuned['json_valid']:.3f} < {min_json_valid}")
    if tuned["field_accuracy"] < base["field_accuracy"] + min_gain_over_base:
        out.append(f"field accuracy {tuned['field_accuracy']:.3f} does not beat the base model's "
                   f"{base['field_accuracy']:.3f} by {min_gain_over_base}")
    if champ and tuned["field_accuracy"] < champ["field_accuracy"] - max_loss_vs_champion:
        out.append(f"field accuracy {tuned['field_accuracy']:.3f} is below the champion's {champ['field_accuracy']:.3f}")
    return out
