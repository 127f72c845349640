"""A fine-tuning job request checked as OpenAI checks it (every mistake one RequestError naming its parameter,
before anything is created), the job as OpenAI returns it, and the preset its run trains with.

A job is a task of the pipeline (ft_pipeline/tasks.py): named by its `suffix` (jobs with the same suffix are the same
task; a suffix that names a task of tasks.yaml is refused), or `ftjob-<id>` without one. Its registered model is
the task's name; its `fine_tuned_model` is `ft:<base>:<suffix>:<job id>` and resolves to the version its run
registered."""

from __future__ import annotations

import math
import re
from typing import Any

from ft_pipeline import tasks

SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # a task slug: what OpenAI allows, lower-cased (64 -> 40 chars)
# The hyperparameters OpenAI defines, the methods that take them and their allowed ranges (inclusive).
RANGES = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": (float, 1e-4, 10.0),
          "beta": (float, 1e-3, 2.0)}
METHOD_PARAMS = {"supervised": ("n_epochs", "batch_size", "learning_rate_multiplier"),
                 "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")}
CREATE_PARAMS = {"model", "training_file", "validation_file", "suffix", "seed", "metadata", "method",
                 "hyperparameters", "integrations"}
# Base models a job may name: the builtin ones and the packaged SmolLM2 (no download needed).
MODELS = ("builtin:tiny", "builtin:smollm2-shape", "smollm2-135m-instruct")


class RequestError(ValueError):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def _bad(message: str, param: str | None, code: str = "invalid_value", status: int = 400) -> RequestError:
    return RequestError(status, message, param, code)


def check_create(body: Any, files, models=MODELS) -> dict:
    """The job's fields from a create request; RequestError for the first thing wrong. `files(id)` returns a file
    row or raises LookupError."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_json")
    if extra := sorted(set(body) - CREATE_PARAMS):
        raise _bad(f"Unknown parameter: '{extra[0]}'.", extra[0], "unknown_parameter")
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise _bad(f"Missing required parameter: '{key}'.", key, "missing_required_parameter")
    model = body["model"]
    if model not in models:
        raise _bad(f"Model {model} is not available for fine-tuning or does not exist. This server fine-tunes: "
                   f"{', '.join(models)}.", "model", "model_not_available")
    method = _method(body)
    kind = "preference" if method["type"] == "dpo" else "chat"  # the rows a file must have (validation.parse)
    used = {}
    for key in ("training_file", "validation_file"):
        if body.get(key) is None:
            continue
        if not isinstance(body[key], str):
            raise _bad(f"Invalid '{key}': expected a file id.", key, "invalid_type")
        try:
            f = files(body[key])
        except LookupError:
            raise _bad(f"Invalid file id '{body[key]}': no such file.", key, "file_not_found", 404) from None
        if f["purpose"] != "fine-tune":
            raise _bad(f"Invalid file '{body[key]}': its purpose is '{f['purpose']}', not 'fine-tune'.", key,
                       "invalid_file_purpose")
        used[key] = f
    if body.get("validation_file") is not None and body["validation_file"] == body["training_file"]:
        raise _bad("Invalid 'validation_file': it is the training file; its rows would be the holdout and none "
                   "would be left to train on. Send another file, or none.", "validation_file")
    suffix = body.get("suffix")
    if suffix is not None and not (isinstance(suffix, str) and SUFFIX.match(suffix)):
        raise _bad("Invalid 'suffix': 1 to 40 lower-case letters, digits and '-', starting with a letter or a digit "
                   f"(it names the job's task and registered model; got {str(suffix)[:50]!r}).", "suffix")
    if suffix is not None and (taken := _taken(suffix)):
        raise _bad(f"Invalid 'suffix': {suffix!r} {taken}; choose another suffix.", "suffix")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= 2**31 - 1):
        raise _bad("Invalid 'seed': expected an integer from 0 to 2147483647.", "seed")
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and len(metadata) <= 16 and all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items())):
        raise _bad("Invalid 'metadata': at most 16 pairs of strings (keys up to 64, values up to 512 characters).",
                   "metadata")
    return {"model": model, "training_file": body["training_file"], "validation_file": body.get("validation_file"),
            "suffix": suffix, "seed": 0 if seed is None else seed, "metadata": metadata, "method": method,
            "kind": kind}


def _taken(suffix: str) -> str | None:
    """Why `suffix` cannot name a job's task (it is a task of the tasks file, or a reserved name), else None."""
    if suffix in tasks.RESERVED:
        return f"is reserved ({tasks.RESERVED[suffix]})"
    if suffix in tasks.repo_tasks():
        return f"is a task of this server's pipeline ({tasks.tasks_file().name}), not a fine-tuning job's"
    return None


def _method(body: dict) -> dict:
    """`method` (or the legacy top-level `hyperparameters`, supervised) with every hyperparameter checked."""
    method = body.get("method")
    if method is None:
        method = {"type": "supervised", "supervised": {"hyperparameters": body.get("hyperparameters") or {}}}
    elif body.get("hyperparameters") is not None:
        raise _bad("Send the hyperparameters in 'method', not also at the top level.", "hyperparameters")
    if not isinstance(method, dict) or method.get("type") not in METHOD_PARAMS:
        kind = method.get("type") if isinstance(method, dict) else None
        raise _bad(f"Invalid 'method.type': expected 'supervised' or 'dpo', got {kind!r}"
                   + (" (reinforcement fine-tuning is not supported)." if kind == "reinforcement" else "."),
                   "method.type")
    kind = method["type"]
    inner = method.get(kind) or {}
    hp = inner.get("hyperparameters") or {} if isinstance(inner, dict) else None
    if not isinstance(hp, dict):
        raise _bad(f"Invalid 'method.{kind}.hyperparameters': expected an object.", f"method.{kind}.hyperparameters")
    out = {}
    for name, value in hp.items():
        param = f"method.{kind}.hyperparameters.{name}"
        if name not in METHOD_PARAMS[kind]:
            raise _bad(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
        out[name] = _hyperparameter(name, value, param)
    return {"type": kind, kind: {"hyperparameters": {k: out.get(k, "auto") for k in METHOD_PARAMS[kind]}}}


def _hyperparameter(name: str, value: Any, param: str):
    if value == "auto":
        return value
    kind, lo, hi = RANGES[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and (kind is float or float(value).is_integer())
    if not ok or not lo <= value <= hi:
        what = "an integer" if kind is int else "a number"
        raise _bad(f"Invalid '{param}': expected \"auto\" or {what} from {lo:g} to {hi:g}, got {value!r}.", param)
    return kind(value)


def task_name(job_id: str, suffix: str | None) -> str:
    return suffix or job_id


def fine_tuned_model(model: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{model}:{suffix or ''}:{job_id}"


def resolved(method: dict, preset_ops: dict, examples: int) -> tuple[dict, dict]:
    """The job's hyperparameters with "auto" resolved against the preset, and the ops overrides they make.
    `n_epochs` sets max_steps to n_epochs passes over `examples` in batches of batch_size; "auto" keeps the
    preset's max_steps (and reports the passes that makes, rounded up)."""
    kind = method["type"]
    hp = dict(method[kind]["hyperparameters"])
    op = "lora_adapter" if kind == "supervised" else "preference_adapter"
    cfg = (preset_ops.get(op) or {}).get("config") or {}
    batch = cfg.get("per_device_train_batch_size", 8) if hp["batch_size"] == "auto" else hp["batch_size"]
    lr = cfg.get("learning_rate", 2e-4) * (1.0 if hp["learning_rate_multiplier"] == "auto"
                                           else hp["learning_rate_multiplier"])
    per_epoch = max(1, math.ceil(examples / batch))
    if hp["n_epochs"] == "auto":
        steps = cfg.get("max_steps", 400)
        hp["n_epochs"] = max(1, math.ceil(steps / per_epoch))
    else:
        steps = per_epoch * hp["n_epochs"]
    hp["batch_size"], hp["learning_rate_multiplier"] = batch, round(lr / cfg.get("learning_rate", 2e-4), 6)
    over = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": lr}
    if kind == "dpo":
        hp["beta"] = cfg.get("beta", 0.1) if hp["beta"] == "auto" else hp["beta"]
        over["beta"] = hp["beta"]
    return hp, {op: over}


def job_object(row: dict) -> dict:
    """The job as OpenAI's `fine_tuning.job`."""
    method = row["method"]
    hp = method[method["type"]]["hyperparameters"]
    return {"object": "fine_tuning.job", "id": row["id"], "created_at": row["created_at"], "model": row["model"],
            "fine_tuned_model": row["fine_tuned_model"], "finished_at": row["finished_at"],
            "organization_id": "org-ft-pipeline", "result_files": row["result_files"] or [], "status": row["status"],
            "validation_file": row["validation_file"], "training_file": row["training_file"],
            "hyperparameters": {k: hp.get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
            "trained_tokens": row["trained_tokens"], "error": row["error"], "seed": row["seed"],
            "estimated_finish": row["estimated_finish"], "integrations": [], "metadata": row["metadata"],
            "method": method, "user_provided_suffix": row["suffix"],
            "ft_pipeline": {"task": row["task"], "registered_model": row["registered_model"],
                            "version": row["version"], "dagster_run_ids": row["dagster_run_ids"] or []}}
