"""eval.batched_speedup: new tokens/s of the evaluation's generation (core.evaluation.generate: length-sorted
batches, left padding, greedy) vs a per-example `model.generate` loop, on the same prompts and the same model.

The model is builtin:tiny trained briefly (60 steps) on the demo drop 2026-01-support_chat.jsonl, so it stops at
<|end|> the way a tuned model does: a random model would run every row to max_new_tokens, which flatters
batching. The prompts are the first 64 holdout examples of that drop, split the way the pipeline splits. Both
sides must produce identical text under greedy decoding, or the benchmark fails.

Run: python -m bench eval   (about a minute or two on 2 cores)"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._report import bench_line  # noqa: E402

DROP = HERE.parent / "data" / "raw" / "2026-01-support_chat.jsonl"
N_PROMPTS, MAX_NEW_TOKENS, TRAIN_STEPS = 64, 64, 60


def demo_split():
    from ft_pipeline.core import cleaning, formats, splitting

    parsed = formats.read_drop(DROP)
    kept = cleaning.clean_records(cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, DROP))).kept
    return splitting.split_examples({parsed.drop: kept}, holdout_fraction=0.1, seed=0)


def per_example(model, tok, conversations):
    """The baseline: one `generate` call per prompt, no padding. Returns texts and new-token counts."""
    import torch

    texts, n_new = [], 0
    for conv in conversations:
        ids = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True), add_special_tokens=False,
                  return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1]:]
        n_new += len(new)  # up to and including <|end|>: the tokens the model had to produce
        texts.append(tok.decode(new, skip_special_tokens=True).strip())
    return texts, n_new


def main() -> int:
    from ft_pipeline.core.base_models import build_tiny
    from ft_pipeline.core.evaluation import generate, load_tuned, prompt_messages
    from ft_pipeline.core.training import TrainOptions, train_adapter

    split = demo_split()
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny(Path(tmp) / "base")
        t0 = time.perf_counter()
        train_adapter(base, split.train, Path(tmp) / "ckpt", Path(tmp) / "adapter",
                      TrainOptions(max_steps=TRAIN_STEPS, per_device_train_batch_size=16, warmup_steps=5,
                                   save_steps=10_000, logging_steps=TRAIN_STEPS),
                      report_to_mlflow=False)
        print(f"# trained builtin:tiny {TRAIN_STEPS} steps in {time.perf_counter() - t0:.0f}s", flush=True)
        model, tok = load_tuned(base, Path(tmp) / "adapter")
        convs = [prompt_messages(r) for r in split.holdout[:N_PROMPTS]]
        generate(model, tok, convs[:4], MAX_NEW_TOKENS)  # warm-up
        t0 = time.perf_counter()
        batched = generate(model, tok, convs, MAX_NEW_TOKENS)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        looped, n_new = per_example(model, tok, convs)
        t_loop = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, looped))
    print(f"# {len(convs)} prompts, {n_new} new tokens; batched {n_new / t_batched:.0f} tok/s ({t_batched:.1f}s), "
          f"per-example loop {n_new / t_loop:.0f} tok/s ({t_loop:.1f}s); identical outputs: {same}/{len(convs)}",
          flush=True)
    if same != len(convs):
        first = next(i for i, (a, b) in enumerate(zip(batched, looped)) if a != b)
        print(f"# outputs differ, first at prompt {first}: batched {batched[first]!r} vs loop {looped[first]!r}")
        return 1
    ok = bench_line("eval.batched_speedup", t_loop / t_batched, "x", ">=", 4)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
