"""A job's checkpoints: the trainer's own (`<task home>/checkpoints/<key>/checkpoint-N/`, what a killed run resumes
from), each with the metrics its trainer_state.json logged at or before its step, read while they exist (training
removes them once the adapter is saved), and shown as OpenAI's `fine_tuning.job.checkpoint`."""

from __future__ import annotations

import json
from pathlib import Path


def metrics(log_history: list[dict], step: int) -> dict:
    """The last logged train loss and token accuracy at or before `step`, and the holdout ones if evaluated."""
    out = {"step": float(step)}
    for entry in log_history:
        if entry.get("step", 0) > step:
            continue
        if "loss" in entry:
            out["train_loss"] = float(entry["loss"])
            if "mean_token_accuracy" in entry:
                out["train_mean_token_accuracy"] = float(entry["mean_token_accuracy"])
        if "eval_loss" in entry:
            out["valid_loss"] = float(entry["eval_loss"])
            if "eval_mean_token_accuracy" in entry:
                out["valid_mean_token_accuracy"] = float(entry["eval_mean_token_accuracy"])
    return out


def found(task_home: Path, since: float, dpo: bool = False) -> list[tuple[int, int, dict]]:
    """(step, written at, metrics) of every complete checkpoint in the task's home written since `since`: SFT's,
    or with `dpo` DPO's (their folders are `checkpoints/dpo-<key>/`, preference_adapter's)."""
    out = []
    for state_file in Path(task_home).glob("checkpoints/*/checkpoint-*/trainer_state.json"):
        if state_file.parents[1].name.startswith("dpo-") != dpo:
            continue
        name = state_file.parent.name.removeprefix("checkpoint-")
        try:
            written, state = state_file.stat().st_mtime, json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):  # removed or still being written: the next look finds it
            continue
        if name.isdigit() and written >= since:
            out.append((int(name), int(written), metrics(state.get("log_history", []), int(name))))
    return out


def checkpoint_object(job_id: str, fine_tuned_model: str, row: dict) -> dict:
    step = row["step"]
    return {"object": "fine_tuning.job.checkpoint", "id": f"ftckpt-{job_id.removeprefix('ftjob-')}-{step}",
            "created_at": row["created_at"], "fine_tuning_job_id": job_id,
            "fine_tuned_model_checkpoint": f"{fine_tuned_model}:ckpt-step-{step}", "step_number": step,
            "metrics": row["metrics"]}
