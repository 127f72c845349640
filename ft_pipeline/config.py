"""The base of the Dagster config classes: each field is checked against its knob (core/knobs.py) when the config
is built, so a wrong value fails with the knob's name and what it may be, in a preset as in the Launchpad."""

from typing import ClassVar

import dagster as dg
from pydantic import ValidationInfo, field_validator

from ft_pipeline.core.knobs import Knob


class CheckedConfig(dg.Config):
    KNOBS: ClassVar[dict[str, Knob]] = {}

    @field_validator("*")
    @classmethod
    def _allowed(cls, value, info: ValidationInfo):
        knob = cls.KNOBS.get(info.field_name)
        if knob is not None and (msg := knob.problem(value)):
            raise ValueError(msg)
        return value
