"""eval.batched_speedup: new tokens/s of the evaluation's generation (evaluation.scoring.generate: length-sorted
batches, left padding, greedy) vs a per-example `model.generate` loop, on the same prompts and the same model.

The model is the default run's base, SmolLM2-135M-Instruct (converted once under the pipeline's home), zero-shot:
it answers the support messages in prose, so most answers run to max_new_tokens on both sides (the
batching-friendly case: a tuned model that stops early leaves finished rows idle in their batch). The prompts are
the first 128 holdout examples of the demo drops, cleaned and split the way the pipeline does it; generation uses
the pipeline's default batch size (64). Each side runs for well over 30 s on 2 cores, so noise does not decide
the ratio. Both sides must produce identical text under greedy decoding, or the benchmark fails.
BENCH_EVAL_MODEL=builtin:tiny measures the tiny model instead.

Run: python -m bench eval   (about five minutes on 2 quiet cores, most of it in the per-example loop)"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._report import bench_line  # noqa: E402

N_PROMPTS, MAX_NEW_TOKENS = 128, 32
MODEL = os.environ.get("BENCH_EVAL_MODEL", "smollm2-135m-instruct")


def demo_holdout():
    from ft_pipeline_tests._demo import demo_split

    return demo_split().holdout


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
    from ft_pipeline import settings
    from ft_pipeline.evaluation.scoring import generate, prompt_messages
    from ft_pipeline.model.base_models import load_model_and_tokenizer, resolve_base_model

    convs = [prompt_messages(r) for r in demo_holdout()[:N_PROMPTS]]
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) if MODEL == "builtin:tiny" else settings.home() / "models"
        model, tok = load_model_and_tokenizer(resolve_base_model(MODEL, where / "base").path)
    print(f"# model {MODEL}", flush=True)
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
