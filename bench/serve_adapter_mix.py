"""ft-pipeline serve's mixed-adapter batch (serving.adapters.SharedBase.rows) against PEFT's and against merging
per batch, and one adapter merged alone: 16 greedy requests over two LoRA adapters on one base, on CPU in fp32.
The one-off measurement behind serving.adapters' choice (docs/serving.md#many-tasks-on-one-server), not a BENCH
line:

    python bench/serve_adapter_mix.py BASE_DIR ADAPTER_DIR [NEW_TOKENS]

BASE_DIR and ADAPTER_DIR are a registered version's artifacts (its base_model and adapter); the second adapter is
the first with its LoRA B matrices negated (other weights, the same cost)."""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main(base_dir: Path, adapter_a: Path, n: int) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file, save_file

    from ft_pipeline.evaluation.scoring import chat_prompt_ids, left_padded, pad_id
    from ft_pipeline.model.base_models import load_model_and_tokenizer
    from ft_pipeline.serving.adapters import SharedBase

    adapter_b = Path(tempfile.mkdtemp()) / "b"
    shutil.copytree(adapter_a, adapter_b)
    w = load_file(adapter_b / "adapter_model.safetensors")
    save_file({k: -v if "lora_B" in k else v for k, v in w.items()}, adapter_b / "adapter_model.safetensors")
    base, tok = load_model_and_tokenizer(base_dir)
    model = PeftModel.from_pretrained(base, str(adapter_a), adapter_name="a")
    model.load_adapter(str(adapter_b), adapter_name="b")
    model.eval()
    ids = chat_prompt_ids(tok, [[{"role": "user", "content": f"Customer {i} wants a refund for ORD-10{i:04d}, "
                                  "it arrived broken."}] for i in range(16)])
    pad, names = pad_id(tok), ["a", "b"] * 8

    def gen(rows, **kw):
        x, m = left_padded(rows, pad)
        with torch.inference_mode():
            return model.generate(input_ids=x, attention_mask=m, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=pad, **kw)

    def merged(name, rows):
        model.set_adapter(name)
        model.merge_adapter()
        try:
            return gen(rows)
        finally:
            model.unmerge_adapter()

    shared = SharedBase(("bench",), model)

    def rows_mixed():
        with shared.rows(names):
            return gen(ids)

    ways = {"rows_mixed_16": rows_mixed, "peft_mixed_16": lambda: gen(ids, adapter_names=names),
            "merge_per_batch_2x8": lambda: [merged(a, [r for r, x in zip(ids, names) if x == a]) for a in "ab"],
            "merged_alone_16": lambda: merged("a", ids)}
    gen(ids[:2], adapter_names=["a", "b"])  # warm-up
    best = {}
    for rep in range(2):
        for label, way in ways.items():
            t0 = time.perf_counter()
            way()
            rate = 16 * n / (time.perf_counter() - t0)
            best[label] = max(best.get(label, 0.0), rate)
            print(label, rep, f"{rate:.1f} tok/s", flush=True)
    print(json.dumps({k: round(v, 1) for k, v in best.items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 32)
