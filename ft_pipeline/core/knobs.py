"""The allowed values of every configurable knob, in one place: TrainOptions checks its own, and the Dagster config
classes check theirs when they are built (a preset before any step runs, a Launchpad run when its step starts).
A wrong value fails with the knob's name and what it may be, not deep inside PEFT or the Trainer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from ft_pipeline.core.evaluation import GATE_METRICS
from ft_pipeline.core.formats import FORMATS
from ft_pipeline.core.retention import PROMPTS
from ft_pipeline.core.token_policy import ON_TOO_LONG

FINETUNE_MODES = ("lora", "full")
LAUNCHERS = ("in_process", "subprocess", "torchrun", "accelerate")
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
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))} (got {value!r})"
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

TRAIN = {
    "max_steps": POSITIVE, "per_device_train_batch_size": POSITIVE, "gradient_accumulation_steps": POSITIVE,
    "warm_start_steps": NON_NEGATIVE,
    "learning_rate": Knob(gt=0, le=1), "lr_scheduler_type": Knob(choices=LR_SCHEDULERS),
    "warmup_steps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE,
    "finetune": Knob(choices=FINETUNE_MODES), "lora_r": POSITIVE, "lora_alpha": POSITIVE,
    "lora_dropout": Knob(ge=0, lt=1), "bnb_4bit_quant_type": Knob(choices=("nf4", "fp4")), "max_length": POSITIVE,
    "seed": NON_NEGATIVE, "save_steps": POSITIVE, "save_total_limit": POSITIVE, "logging_steps": POSITIVE,
    "precision": Knob(choices=("auto", "bf16", "fp16", "fp32")), "eval_steps": NON_NEGATIVE,
    "early_stopping_patience": NON_NEGATIVE,
    "launcher": Knob(choices=LAUNCHERS), "num_processes": POSITIVE,
}
DATA = {
    "format": Knob(choices=("auto", *FORMATS)), "near_dup_threshold": Knob(gt=0, le=1), "near_dup_num_perm": Knob(ge=2),
    "near_dup_ngram": POSITIVE, "max_chars": POSITIVE, "holdout_fraction": Knob(gt=0, lt=1), "seed": NON_NEGATIVE,
    "max_tokens": POSITIVE, "on_too_long": Knob(choices=ON_TOO_LONG),
}
EVALUATION = {
    "max_new_tokens": POSITIVE, "batch_size": POSITIVE, "max_examples": NON_NEGATIVE,
    "retention_prompts": Knob(ge=0, le=len(PROMPTS)),
    "min_json_valid": FRACTION, "metric": Knob(choices=GATE_METRICS), "max_retention_kl": NON_NEGATIVE,
}
BASE_MODEL = {"seed": NON_NEGATIVE}
# TRL 1.16's DPOConfig.loss_type values (pinned)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
PREFERENCE = {
    "max_steps": POSITIVE, "per_device_train_batch_size": POSITIVE, "gradient_accumulation_steps": POSITIVE,
    "learning_rate": Knob(gt=0, le=1), "lr_scheduler_type": Knob(choices=LR_SCHEDULERS),
    "warmup_steps": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE, "beta": Knob(gt=0),
    "loss_type": Knob(choices=DPO_LOSS_TYPES), "label_smoothing": Knob(ge=0, lt=0.5), "sft_weight": NON_NEGATIVE, "max_length": POSITIVE,
    "seed": NON_NEGATIVE, "save_steps": POSITIVE, "save_total_limit": POSITIVE, "logging_steps": POSITIVE,
    "precision": Knob(choices=("auto", "bf16", "fp16", "fp32")), "holdout_fraction": Knob(gt=0, lt=1),
}


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
