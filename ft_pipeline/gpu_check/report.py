"""The check's figures, from what its steps returned, and its summary: gpu-check.json and gpu-check.md in $OUT.
Stdlib only, like the runner."""

from __future__ import annotations

import json
import time
from pathlib import Path

LEFT_OUT = [
    "Dagster and MLflow: not on the GPU machine and not bundled (with their dependencies they would not fit in "
    "64 MiB beside the rest); the check trains through the framework-free entry point, python -m "
    "ft_pipeline.model.train, with no MLflow run (report_to none), and evaluates through evaluation/scoring.py.",
    "QLoRA: needs bitsandbytes, whose CUDA wheel alone is larger than the 64 MiB that can be copied; not run.",
    "The Hub presets (gpu_lora_qwen, qlora_qwen, multi_gpu_qwen): the GPU machine cannot reach the Hub, and the "
    "packaged SmolLM2 file (98 MB) cannot be copied; the real-shaped builtin:smollm2-shape stands in.",
]
QUALITY = ("The base model ({}) is randomly initialised: on the GPU, builtin:smollm2-shape's speed, memory and MFU "
           "are the real SmolLM2-135M's (same shape, same arithmetic), but its answers, loss and evaluation scores "
           "mean nothing.")


def throughput(ticks: list[tuple[float, dict]]) -> dict:
    """Training tokens/s between the first and the last step log that count tokens (the first steps' start-up and
    CUDA warm-up left out), from (arrival time, log) pairs of the entry point's FT_LOG lines."""
    seen = [(t, d) for t, d in ticks if d.get("num_input_tokens_seen") is not None and "loss" in d]
    if len(seen) < 2 or seen[-1][0] <= seen[0][0]:
        return {}
    (t0, first), (t1, last) = seen[0], seen[-1]
    tokens = last["num_input_tokens_seen"] - first["num_input_tokens_seen"]
    steps = last["step"] - first["step"]
    return {"steady_tokens_per_s": tokens / (t1 - t0), "steady_tokens": tokens, "steady_seconds": t1 - t0,
            "steady_steps": f"{first['step']}-{last['step']}", "steady_s_per_step": (t1 - t0) / max(steps, 1),
            "first_loss": first.get("loss"), "last_loss": last.get("loss")}


def _details(check, name: str) -> dict:
    return next((s["details"] for s in check.steps if s["step"] == name and s["status"] == "ok"), {})


def figures(check) -> dict:
    """The headline figures; a figure whose step failed is None."""
    train, pad, ev = (_details(check, n) for n in ("train", "padding", "evaluate"))
    env = check.state.get("versions") or {}
    logs = train or check.state.get("train_logs") or {}
    tok_s, basis = logs.get("steady_tokens_per_s"), "between the first and last step logs"
    if tok_s is None and train.get("train_runtime_s"):
        tok_s, basis = train["train_tokens"] / train["train_runtime_s"], "whole train() call (too few logs)"
    params, mm = check.state.get("params"), check.state.get("mm_flops_per_s")
    # As bench/bench_train.py counts: 2 FLOPs per parameter forward and 2 backward to the activations; LoRA
    # computes no gradient for the frozen weights (a full fine-tune adds 2 more). A tied head counts once.
    per_param = 6 if train.get("finetune") == "full" else 4
    flops_tok = per_param * params if params else None
    gpu_mem = train.get("peak_gpu_memory_bytes")
    tests = check.state.get("gpu_tests") or {}
    return {
        "train_tokens_per_s": tok_s, "train_tokens_per_s_basis": basis if tok_s else None,
        "model_flops_per_token": flops_tok, "model_flops_rule": f"{per_param} x parameters per real token",
        "mm_flops_per_s": mm, "mm_reference": check.plan["matmul"],
        "mfu": flops_tok * tok_s / mm if flops_tok and tok_s and mm else None,
        "peak_gpu_memory_bytes": gpu_mem, "peak_gpu_memory_gib": round(gpu_mem / 2**30, 2) if gpu_mem else None,
        "peak_train_rss_bytes": train.get("peak_rss_bytes"),
        "padding_efficiency": pad.get("efficiency"),
        "eval_answers_per_s": ev.get("answers_per_s"), "eval_new_tokens_per_s": ev.get("new_tokens_per_s"),
        "eval_answers": ev.get("answers"), "train_steps": train.get("global_step"),
        "train_loss": train.get("train_loss"),
        "gpu_tests": {k: tests.get(k) for k in ("tests", "failures", "errors", "skipped")} if tests else None,
        "device": env.get("gpu") or ("cpu" if env else None), "torch": env.get("torch"),
        "unmet_requirements": env.get("unmet_requirements"),
    }


def summarize(check) -> dict:
    failed = [{"step": s["step"], "error": s["error"]} for s in check.steps if s["status"] == "failed"]
    return {"mode": "dry run: CPU, builtin:tiny, a few steps" if check.dry else "gpu",
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "ok": not failed, "failures": failed,
            "figures": figures(check), "steps": check.steps, "left_out": LEFT_OUT,
            "quality": QUALITY.format(_details(check, "base_model").get("spec", "not built"))}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def markdown(summary: dict) -> str:
    f = summary["figures"]
    lines = [f"# GPU check ({summary['mode']}), {summary['finished']}", "",
             f"**{'All steps passed' if summary['ok'] else str(len(summary['failures'])) + ' step(s) failed'}**. "
             f"Device: {_fmt(f['device'])}, torch {_fmt(f['torch'])}.", "", summary["quality"], "",
             "| figure | value |", "|---|---|"]
    mm = f["mm_reference"]
    rows = [("training tokens/s (" + _fmt(f["train_tokens_per_s_basis"]) + ")", f["train_tokens_per_s"]),
            (f"MFU (model FLOPs: {f['model_flops_rule']}, / torch.mm {mm['dtype']} {mm['n']}x{mm['n']})", f["mfu"]),
            ("model FLOPs per token", f["model_flops_per_token"]), ("torch.mm FLOP/s", f["mm_flops_per_s"]),
            ("peak GPU memory, training (GiB)", f["peak_gpu_memory_gib"]),
            ("padding efficiency (real / processed token positions, one epoch)", f["padding_efficiency"]),
            ("evaluation answers/s", f["eval_answers_per_s"]), ("evaluation new tokens/s", f["eval_new_tokens_per_s"]),
            ("training steps / final loss", f"{_fmt(f['train_steps'])} / {_fmt(f['train_loss'])}"),
            ("gpu test tier (tests, failures, errors, skipped)",
             ", ".join(_fmt(v) for v in f["gpu_tests"].values()) if f["gpu_tests"] else None)]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "| step | status | seconds | error |", "|---|---|---|---|"]
    for s in summary["steps"]:
        err = (s["error"] or "").splitlines()[0][:200] if s["error"] else ""
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {err.replace('|', '/')} |")
    if summary["failures"]:
        lines += ["", "## Failures", ""]
        for fl in summary["failures"]:
            lines += [f"### {fl['step']}", "", "```", fl["error"], "```", ""]
    if f["unmet_requirements"]:
        lines += ["", "## Unmet requirements (warnings: the steps above tell whether they mattered)", ""]
        lines += [f"- {x}" for x in f["unmet_requirements"]]
    lines += ["", "## Left out", ""] + [f"- {x}" for x in summary["left_out"]]
    return "\n".join(lines) + "\n"


def write(out: Path, summary: dict) -> None:
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(markdown(summary))
