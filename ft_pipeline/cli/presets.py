"""A preset (configs/*.yaml: Dagster run config under `ops:`) read and checked as a whole before any step runs:
unknown ops and keys (with the nearest known name), wrong types, values out of range, combinations the training
options refuse and a missing local base model, each as one line naming the file and the key. The checks are the
config classes' own (ft_pipeline/config.py), so a Launchpad run with the same values fails the same way."""

from __future__ import annotations

import difflib
import os
from pathlib import Path


class PresetError(Exception):
    """A preset that cannot run: `lines` holds one line per problem."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


def run_config(preset: dict, job) -> dict:
    """The part of a preset's `ops:` that belongs to `job`, logged to the terminal as one line per stage (see
    ft_pipeline/console.py; the full event stream stays in the Dagster UI)."""
    names = {n.name for n in job.graph.node_defs}
    ops = {k: v for k, v in (preset.get("ops") or {}).items() if k in names}
    return {"ops": ops, "loggers": {"stages": {}}}


def load(path: str | Path, jobs) -> dict:
    """The preset at `path`, checked against the ops of `jobs`; raises PresetError listing every problem."""
    import yaml

    where = str(path)
    try:
        preset = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise PresetError([f"{where}: cannot read the preset: {e.strerror}"]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise PresetError([f"{where}{at}: not valid YAML: {getattr(e, 'problem', None) or e}"]) from e
    preset = {} if preset is None else preset
    problems = list(_problems(preset, _config_classes(jobs)))
    if not problems:
        problems = list(_dagster_problems(preset, jobs))
    if problems:
        raise PresetError([f"{where}: {key}: {msg}" for key, msg in problems])
    return preset


def _config_classes(jobs) -> dict:
    """Op name -> its config class, or None for an op that takes no config."""
    out = {}
    for job in jobs:
        for node in job.graph.node_defs:
            fn = node.compute_fn
            out[node.name] = fn.get_config_arg().annotation if fn.has_config_arg() else None
    return out


def _did_you_mean(word, known) -> str:
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _problems(preset, classes: dict):
    if not isinstance(preset, dict):
        yield "(top level)", f"must be a mapping with an `ops:` key, not a {type(preset).__name__}"
        return
    for key in preset:
        if key != "ops":
            yield key, "unknown key" + _did_you_mean(key, ["ops"])
    ops = preset.get("ops") or {}
    if not isinstance(ops, dict):
        yield "ops", "must be a mapping of op names to `config:` blocks"
        return
    for op, entry in ops.items():
        where = f"ops.{op}"
        if op not in classes:
            yield where, "unknown op" + _did_you_mean(op, classes)
        elif not isinstance(entry, dict):
            yield where, "must be a mapping with a `config:` key"
        else:
            for key in entry:
                if key != "config":
                    yield f"{where}.{key}", "unknown key" + _did_you_mean(key, ["config"])
            yield from _config_problems(f"{where}.config", classes[op], entry.get("config") or {})


def _config_problems(where: str, cls, config):
    import pydantic

    from ft_pipeline.knobs import KnobError

    if cls is None:
        if config:
            yield where, "this op takes no config"
        return
    if not isinstance(config, dict):
        yield where, "must be a mapping of knob names to values"
        return
    fields = cls.model_fields
    for key in config:
        if key not in fields:
            yield f"{where}.{key}", "unknown key" + _did_you_mean(key, fields)
    values = {}
    for key, value in config.items():
        if isinstance(value, dict) and list(value) == ["env"]:  # Dagster's {env: NAME}: the variable's value
            if (value := os.environ.get(str(value["env"]))) is None:
                yield f"{where}.{key}", f"environment variable {config[key]['env']} is not set"
                continue
        if key in fields:
            values[key] = value
    try:
        cls(**values)
    except pydantic.ValidationError as e:
        for err in e.errors():
            error = (err.get("ctx") or {}).get("error")
            if isinstance(error, KnobError):
                yield from ((f"{where}.{k}", msg) for k, msg in error.problems)
                continue
            loc = ".".join(map(str, err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] != "value_error":
                msg += f" (got {err['input']!r})"
            yield (f"{where}.{loc}" if loc else where), msg


def _dagster_problems(preset: dict, jobs):
    """What Dagster's own config schema refuses that pydantic let through (e.g. 8.0 for an int)."""
    import dagster as dg

    for job in jobs:
        try:
            dg.validate_run_config(job, run_config(preset, job))
        except dg.DagsterInvalidConfigError as e:
            for err in e.errors:
                path = [getattr(entry, "field_name", None) for entry in err.stack.entries]
                yield ".".join(filter(None, path)) or "ops", err.message.split(". ", 1)[-1]
