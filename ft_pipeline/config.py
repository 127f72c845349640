"""The base of the Dagster config classes: each field is checked against its knob (knobs.py) when the config
is built, so a wrong value fails with the knob's name and what it may be, in a preset as in the Launchpad.

Their defaults come from one preset, $FT_PIPELINE_DEFAULTS (default configs/cpu_smollm2.yaml, what `make run`
runs): a run of the default task launched with no config, from the Launchpad or by the automation's retrain on
its cron, trains what `make run` trains. Another task's step takes its preset's values first
(resources.task_config). The tests set it to configs/cpu_tiny.yaml (builtin:tiny)."""

import functools
import os
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import ValidationInfo, field_validator

from ft_pipeline.knobs import Knob

DEFAULTS_ENV = "FT_PIPELINE_DEFAULTS"


@functools.cache
def _defaults_preset() -> dict:
    import yaml

    from ft_pipeline.settings import REPO_ROOT

    path = Path(os.environ.get(DEFAULTS_ENV) or REPO_ROOT / "configs" / "cpu_smollm2.yaml")
    if not path.is_absolute():
        path = REPO_ROOT / path
    try:
        return yaml.safe_load(path.read_text()).get("ops") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise RuntimeError(f"{DEFAULTS_ENV}={path}: not a readable preset ({e})") from e


def preset_defaults(op: str) -> dict[str, Any]:
    """The `ops.<op>.config` block of the defaults preset (empty when it has none)."""
    return dict((_defaults_preset().get(op) or {}).get("config") or {})


class CheckedConfig(dg.Config):
    KNOBS: ClassVar[dict[str, Knob]] = {}

    @field_validator("*")
    @classmethod
    def _allowed(cls, value, info: ValidationInfo):
        knob = cls.KNOBS.get(info.field_name)
        if knob is not None and (msg := knob.problem(value)):
            raise ValueError(msg)
        return value
