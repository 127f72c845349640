"""Greedy-answer parity between two runtimes of one model (the merged model, its GGUF in transformers, the GGUF in
llama.cpp): each answer as token ids, how many are identical, the first differing token's logit gap, and the
others side by side for a failure message."""

from __future__ import annotations

import json
from pathlib import Path

from ft_pipeline.settings import REPO_ROOT

HANDWRITTEN = REPO_ROOT / "data" / "eval" / "support_handwritten.jsonl"


def handwritten() -> list[dict]:
    return [json.loads(line) for line in HANDWRITTEN.read_text().splitlines() if line.strip()]


def greedy_answers(model, tok, prompts: list[list[int]], max_new_tokens: int, batch: int = 16) -> list[list[int]]:
    """Each prompt's greedy answer as token ids, up to and including the end-of-turn token, generated in
    left-padded batches of similar length as evaluation does."""
    import torch

    from ft_pipeline.evaluation.scoring import left_padded, pad_id

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        ids, mask = left_padded([prompts[i] for i in idx], pad_id(tok))
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad_id(tok), eos_token_id=tok.eos_token_id)
        for i, row in zip(idx, gen[:, ids.shape[1]:].tolist(), strict=True):
            stop = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            out[i] = row[:stop]
    return out


def first_difference(a: list[int], b: list[int]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a + [-1], b + [-1])) if x != y)


def logit_gap(ref, tok, prompt: list[int], want: list[int], got: list[int]) -> float:
    """The reference model's top logit minus its logit for the token `got` chose where it parts from `want`: how
    near a tie the reference was at the first difference."""
    import torch

    k = first_difference(want, got)
    with torch.inference_mode():
        logits = ref(torch.tensor([prompt + want[:k]])).logits[0, -1]
    other = got[k] if k < len(got) else tok.eos_token_id
    return float(logits.max() - logits[other])


def side_by_side(labels: tuple[str, str], rows: list[tuple[str, str, str]]) -> str:
    """The answers that differ as a table: the message, then each runtime's answer."""
    lines = [f"{'message':<40} | {labels[0]:<50} | {labels[1]}"]
    for msg, a, b in rows:
        lines.append(f"{msg[:40]:<40} | {a!r:<50} | {b!r}")
    return "\n".join(lines)


def train_smollm2(base: Path, out: Path, steps: int) -> tuple[Path, Path]:
    """A LoRA on SmolLM2 trained `steps` steps on the demo train split with the default run's options
    (configs/cpu_smollm2.yaml), and its merge: (adapter dir, merged dir)."""
    import yaml

    from ft_pipeline.export.merged import merge_adapter
    from ft_pipeline.model.training import TrainOptions, train_adapter
    from ft_pipeline_tests._demo import demo_split

    preset = yaml.safe_load((REPO_ROOT / "configs" / "cpu_smollm2.yaml").read_text())["ops"]["lora_adapter"]["config"]
    known = set(TrainOptions.__dataclass_fields__)
    opts = TrainOptions(**{**{k: v for k, v in preset.items() if k in known}, "max_steps": steps,
                           "save_steps": steps + 1, "warm_start_steps": 0})
    train_adapter(base, demo_split().train, out / "checkpoints", out / "adapter", opts, report_to_mlflow=False)
    return out / "adapter", merge_adapter(base, out / "adapter", out / "merged")
