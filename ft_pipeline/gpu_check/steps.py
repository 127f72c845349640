"""The check's steps that need the training stack, each run by the runner in a process of its own (a crash or a
CUDA error in one leaves the others running): `python -m ft_pipeline.gpu_check.steps STEP PLAN_JSON RESULT_JSON`.
Training itself is not here: the runner starts the project's entry point, `python -m ft_pipeline.model.train`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def settings(plan: dict) -> dict:
    """The preset's base model, seed and evaluation settings, with the plan's overrides (the dry run's)."""
    import yaml

    from ft_pipeline.settings import REPO_ROOT

    ops = yaml.safe_load((REPO_ROOT / plan["preset"]).read_text())["ops"]
    base = (ops.get("base_model") or {}).get("config") or {}
    ev = (ops.get("evaluation_report") or {}).get("config") or {}
    return {"base_model": base.get("base_model"), "seed": base.get("seed", 0),
            "max_new_tokens": ev.get("max_new_tokens", 128), "eval_batch_size": ev.get("batch_size", 64), **plan}


def versions(plan: dict) -> dict:
    """Where the check runs: Python, torch and its device, and the versions (and folders) of the training stack."""
    import importlib
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "packages": {}}
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   bf16_supported=torch.cuda.is_bf16_supported(),
                   gpu_memory_bytes=torch.cuda.get_device_properties(0).total_memory)
    for name in ("transformers", "trl", "peft", "datasets", "accelerate", "tokenizers", "huggingface_hub",
                 "safetensors", "pytest", "numpy", "pandas", "pyarrow"):
        mod = importlib.import_module(name)
        out["packages"][name] = {"version": getattr(mod, "__version__", "?"),
                                 "from": str(Path(mod.__file__).parent.parent)}
    out["unmet_requirements"] = unmet_requirements(plan.get("pins") or {})
    return out


def unmet_requirements(pins: dict) -> list[str]:
    """Each requirement of the bundled distributions that what Python finds here does not meet (a version of the
    machine's own numpy, pandas or pyarrow older than a bundled package asks for, say), or a pin not found."""
    from importlib.metadata import PackageNotFoundError, distribution, version

    from packaging.requirements import Requirement

    out = []
    for name, pinned in pins.items():
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            out.append(f"{name}=={pinned}: not found")
            continue
        if dist.version != pinned:
            out.append(f"{name}=={pinned}: found {dist.version}")
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = version(req.name)
            except PackageNotFoundError:
                out.append(f"{name} requires {req}: not installed")
                continue
            if not req.specifier.contains(have, prereleases=True):
                out.append(f"{name} requires {req}: found {have}")
    return out


def matmul(plan: dict) -> dict:
    """FLOP/s of torch.mm on n x n matrices (bf16 on a GPU, fp32 on a CPU), sustained for a few seconds."""
    import torch

    m = plan["matmul"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, m["dtype"])
    a = torch.randn(m["n"], m["n"], device=device, dtype=dtype)
    b = torch.randn(m["n"], m["n"], device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        torch.mm(a, b)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < m["seconds"]:
        for _ in range(10):
            torch.mm(a, b)
        sync()
        n += 10
    seconds = time.perf_counter() - t0
    return {"flops_per_s": n * 2 * m["n"] ** 3 / seconds, "n": m["n"], "dtype": m["dtype"], "device": device,
            "matmuls": n, "seconds": seconds}


def base_model(plan: dict) -> dict:
    """Build the base model (builtin: random, deterministic) and count its parameters as it computes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ft_pipeline.model.base_models import resolve_base_model

    info = resolve_base_model(plan["base_model"], Path(plan["work"]) / "models", seed=plan["seed"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(info.path)))
    cfg = model.config
    return {**info.to_json(), "params": sum(p.numel() for p in model.parameters()),  # a tied head counts once
            "shape": {k: getattr(cfg, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                   "num_attention_heads", "num_key_value_heads", "vocab_size",
                                                   "tie_word_embeddings")}}


def data(plan: dict) -> dict:
    """The demo drops through the data stage (parse, canonicalize, clean, split), written as train/holdout JSONL."""
    from ft_pipeline.data import cleaning, formats, splitting
    from ft_pipeline.jsonl import write_jsonl
    from ft_pipeline.settings import REPO_ROOT

    found, _ = formats.find_drops(REPO_ROOT / "data" / "raw")
    drops = {}
    for name, path in sorted(found.items()):
        parsed = formats.read_drop(path)
        canonical = cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, path))
        drops[name] = cleaning.clean_records(canonical).kept
    split = splitting.split_examples(drops, holdout_fraction=0.1, seed=0)
    work = Path(plan["work"])
    write_jsonl(work / "train.jsonl", split.train)
    write_jsonl(work / "holdout.jsonl", split.holdout)
    return {"drops": sorted(drops), "train": len(split.train), "holdout": len(split.holdout)}


def _options(plan: dict):
    from ft_pipeline.model.train import options_from

    return options_from(plan["preset"], json.dumps(plan["options"]))


def padding(plan: dict) -> dict:
    """Real / processed token positions over one epoch of the batches the training options build (the trainer's
    own sampler and collator)."""
    from ft_pipeline.jsonl import read_jsonl
    from ft_pipeline.model.training import build_trainer

    work = Path(plan["work"])
    trainer = build_trainer(Path(plan["base_dir"]), read_jsonl(work / "train.jsonl"), work / "padding-ckpt",
                            _options(plan), report_to_mlflow=False)
    inner, counts = trainer.data_collator, {"real": 0, "processed": 0, "batches": 0}

    def counting(examples):
        batch = inner(examples)
        mask = batch.get("attention_mask")
        counts["processed"] += batch["input_ids"].numel()
        counts["real"] += int(mask.sum()) if mask is not None else sum(len(e["input_ids"]) for e in examples)
        counts["batches"] += 1
        return batch

    trainer.data_collator = counting
    for _ in trainer.get_train_dataloader():
        pass
    return {**counts, "efficiency": counts["real"] / max(counts["processed"], 1),
            "batch_size": trainer.args.per_device_train_batch_size}


def evaluate(plan: dict) -> dict:
    """The tuned model (base + adapter, merged while answering) through the evaluation stage's batched greedy
    generation and scoring, on the holdout; answers/s over the whole evaluation, after a two-answer warm-up."""
    import torch
    from peft import PeftModel

    from ft_pipeline.evaluation import scoring
    from ft_pipeline.evaluation.cache import EvalCache
    from ft_pipeline.jsonl import read_jsonl
    from ft_pipeline.model.base_models import load_model_and_tokenizer
    from ft_pipeline.model.train import peak_memory

    work = Path(plan["work"])
    records = read_jsonl(work / "holdout.jsonl")[:plan["eval_examples"] or None]
    cuda = torch.cuda.is_available()
    base, _ = load_model_and_tokenizer(plan["base_dir"], dtype="bfloat16" if cuda else "float32",
                                       device="cuda" if cuda else "cpu")
    tok = scoring.load_tokenizer(plan["adapter_dir"])
    model = PeftModel.from_pretrained(base, plan["adapter_dir"]).eval()
    budget = scoring.answer_budget(tok, records, plan["max_new_tokens"])
    with scoring.merged(model):
        scoring.generate(model, tok, [scoring.prompt_messages(r) for r in records[:2]], budget)  # warm-up
        cache = EvalCache(None, None)
        t0 = time.perf_counter()
        result = scoring.evaluate(model, tok, records, budget, plan["eval_batch_size"], cache=cache)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    new_tokens = sum(e["n_new"] for e in cache.entries.values())
    return {"answers": len(records), "seconds": seconds, "answers_per_s": len(records) / seconds,
            "new_tokens": new_tokens, "new_tokens_per_s": new_tokens / seconds, "max_new_tokens": budget,
            "batch_size": plan["eval_batch_size"], "metrics_meaningless_on_a_random_base": result["metrics"],
            **peak_memory()}


STEPS = {f.__name__: f for f in (versions, matmul, base_model, data, padding, evaluate)}


def main(argv: list[str]) -> int:
    name, plan_file, result_file = argv
    result = STEPS[name](settings(json.loads(Path(plan_file).read_text())))
    Path(result_file).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
