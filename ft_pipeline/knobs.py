"""How a knob's allowed values are written and checked. Each stage declares its own (`KNOBS` in model/training.py,
model/base_models.py, data/splitting.py, evaluation/run.py, preference/training.py): TrainOptions checks its own,
and the Dagster config classes check theirs when they are built (a preset before any step runs, a Launchpad run
when its step starts). A wrong value fails with the knob's name and what it may be, not deep inside PEFT or the
Trainer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# transformers 5.23's SchedulerType values (pinned), so a typo fails before the model loads.
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")


@dataclass(frozen=True)
class Knob:
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None

    def problem(self, value) -> str | None:
        """What is wrong with `value`, or None."""
        if self.choices is not None:
            return (None if value in self.choices
                    else f"must be one of {', '.join(map(str, self.choices))} (got {value!r})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # types are the config classes' job
        low = (">= %s" % self.ge if self.ge is not None else "> %s" % self.gt if self.gt is not None else None)
        high = ("<= %s" % self.le if self.le is not None else "< %s" % self.lt if self.lt is not None else None)
        bad = ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
               or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt))
        return f"must be {' and '.join(filter(None, (low, high)))} (got {value!r})" if bad else None


class KnobError(ValueError):
    """One or more knobs have values they may not take: `problems` is [(knob, what is wrong)]."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{k}: {msg}" for k, msg in problems))


POSITIVE, NON_NEGATIVE, FRACTION = Knob(ge=1), Knob(ge=0), Knob(ge=0, le=1)
PRECISION = Knob(choices=("auto", "bf16", "fp16", "fp32"))


def problems(values: dict, spec: dict[str, Knob]) -> list[tuple[str, str]]:
    """[(knob, what is wrong)] for every value in `values` that `spec` does not allow."""
    return [(k, msg) for k, v in values.items() if k in spec and (msg := spec[k].problem(v))]


def check(values: dict, spec: dict[str, Knob]) -> None:
    if found := problems(values, spec):
        raise KnobError(found)


def fingerprint(options, leave_out: tuple[str, ...]) -> str:
    """A short hash of a dataclass of knobs that changes whenever one of them changes, except those in
    `leave_out` (logging and saving, which do not change the trained weights)."""
    values = {k: v for k, v in asdict(options).items() if k not in leave_out}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
