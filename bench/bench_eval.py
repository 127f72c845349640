"""eval.batched_speedup: new tokens/s of the evaluation's generation (core.evaluation.generate: length-sorted
batches, left padding, greedy) vs a per-example `model.generate` loop, on the same prompts and the same model.

The model is builtin:tiny as built (random weights, seed 0), untrained: a brief training run costs minutes here
and still does not teach it to stop (60 steps did not), so every answer runs to max_new_tokens on both sides.
That is the batching-friendly case: a tuned model that stops early leaves finished rows idle in their batch,
so expect less than this figure on a trained model. The prompts are the first 48 holdout examples of the demo
drop 2026-01-support_chat.jsonl, cleaned and split the way the pipeline does it; generation uses the pipeline's
default batch size (64). Both sides must produce identical text under greedy decoding, or the benchmark fails.

Run: python -m bench eval   (about two minutes on 2 shared cores, almost all of it in the per-example loop)"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._report import bench_line  # noqa: E402

DROP = HERE.parent / "data" / "raw" / "2026-01-support_chat.jsonl"
N_PROMPTS, MAX_NEW_TOKENS = 48, 32


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
    from ft_pipeline.core.base_models import build_tiny, load_model_and_tokenizer
    from ft_pipeline.core.evaluation import generate, prompt_messages

    convs = [prompt_messages(r) for r in demo_split().holdout[:N_PROMPTS]]
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = load_model_and_tokenizer(build_tiny(Path(tmp) / "base", seed=0))
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
