"""Preference tuning (DPO) with TRL's DPOTrainer, starting from the SFT adapter.

The reference model is the SFT model, not the base: the policy is a PeftModel that already holds the SFT adapter
(trainable), and TRL 1.16 then makes a frozen copy of that adapter, "ref", its reference. (A plain model plus a
fresh `peft_config` would make the base the reference; test_preference_training proves which one we get with a
reference log-probability computed by hand.) Like SFT, training resumes from the last checkpoint in its
checkpoint folder after a kill, and only the trained adapter ("default") is saved."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ft_pipeline import knobs
from ft_pipeline.model import cpu_speed
from ft_pipeline.model.training import TrainResult

_NOT_IN_FINGERPRINT = ("enabled", "logging_steps", "save_steps", "save_total_limit")


# TRL 1.16's DPOConfig.loss_type values (pinned)
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
KNOBS = {
    "max_steps": knobs.POSITIVE, "per_device_train_batch_size": knobs.POSITIVE,
    "gradient_accumulation_steps": knobs.POSITIVE,
    "learning_rate": knobs.Knob(gt=0, le=1), "lr_scheduler_type": knobs.Knob(choices=knobs.LR_SCHEDULERS),
    "warmup_steps": knobs.NON_NEGATIVE, "max_grad_norm": knobs.NON_NEGATIVE, "beta": knobs.Knob(gt=0),
    "loss_type": knobs.Knob(choices=DPO_LOSS_TYPES), "label_smoothing": knobs.Knob(ge=0, lt=0.5),
    "sft_weight": knobs.NON_NEGATIVE, "max_length": knobs.POSITIVE,
    "seed": knobs.NON_NEGATIVE, "save_steps": knobs.POSITIVE, "save_total_limit": knobs.POSITIVE,
    "logging_steps": knobs.POSITIVE,
    "precision": knobs.PRECISION, "holdout_fraction": knobs.Knob(gt=0, lt=1),
}


@dataclass
class PreferenceOptions:
    """Every knob of a DPO run. The defaults are the fast CPU run on builtin:tiny."""

    enabled: bool = True  # false: the asset records that it was switched off, and the SFT adapter goes on
    max_steps: int = 20
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3  # LoRA on builtin:tiny; a pretrained model wants far less (see cpu_smollm2_dpo)
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    beta: float = 0.1  # how far the policy may move from the reference: lower = further
    loss_type: str = "sigmoid"  # the DPO loss; ipo, hinge, robust, ... (TRL's names)
    label_smoothing: float = 0.0  # > 0 with sigmoid: conservative DPO, for noisy preference labels
    # > 0: add TRL's "sft" loss (the chosen answer's NLL) with this weight, as RPO does: DPO alone can lower the
    # chosen answer's likelihood along with the rejected one's, and a model that only has to rank the two may
    # stop writing the chosen one (e.g. keep adding keys after the last field of a JSON object).
    sft_weight: float = 0.0
    max_length: int = 1024
    # Reference log-probabilities computed once before training (one forward pass per pair with the frozen
    # reference adapter), instead of one reference forward per pair per step.
    precompute_ref_log_probs: bool = True
    seed: int = 0
    save_steps: int = 10
    save_total_limit: int = 2
    logging_steps: int = 5
    precision: str = "auto"

    def __post_init__(self):
        knobs.check(asdict(self), KNOBS)

    def fingerprint(self) -> str:
        return knobs.fingerprint(self, _NOT_IN_FINGERPRINT)

    def to_params(self) -> dict:
        return asdict(self)


@dataclass
class PreferenceResult(TrainResult):
    """A TrainResult, with the number of pairs trained on."""

    pairs: int = 0

    def last(self, key: str) -> float | None:
        """The last logged value of a metric (e.g. rewards/margins)."""
        values = [h[key] for h in self.log_history if key in h]
        return float(values[-1]) if values else None

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
                if k not in ("log_history", "supervision", "best_checkpoint", "best_eval_loss")}


def dpo_config(opts: PreferenceOptions, checkpoint_dir: Path, run_name: str, report_to_mlflow: bool):
    """The one place PreferenceOptions become a DPOConfig (TRL's defaults for bf16 and gradient checkpointing
    are GPU-minded: both follow the machine here)."""
    import torch
    from trl import DPOConfig

    from ft_pipeline.model.training import resolve_precision

    precision = resolve_precision(opts.precision)
    return DPOConfig(
        output_dir=str(checkpoint_dir), run_name=run_name, max_steps=opts.max_steps,
        per_device_train_batch_size=opts.per_device_train_batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps, learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=opts.warmup_steps, max_grad_norm=opts.max_grad_norm,
        beta=opts.beta, loss_type=[opts.loss_type] + (["sft"] if opts.sft_weight > 0 else []),
        loss_weights=[1.0, opts.sft_weight] if opts.sft_weight > 0 else None, label_smoothing=opts.label_smoothing,
        max_length=opts.max_length, precompute_ref_log_probs=opts.precompute_ref_log_probs,
        seed=opts.seed, data_seed=opts.seed, save_strategy="steps", save_steps=opts.save_steps,
        save_total_limit=opts.save_total_limit, logging_steps=opts.logging_steps,
        activation_checkpointing=False, bf16=precision == "bf16", fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(), report_to=["mlflow"] if report_to_mlflow else [],
        disable_tqdm=True, dataset_num_proc=None, include_num_input_tokens_seen="non_padding",
    )


def load_policy(base_dir: Path | str, sft_dir: Path | str, precision: str = "auto"):
    """The model DPO trains, and its tokenizer: the base with the SFT adapter loaded trainable (so TRL's
    reference is a frozen copy of it), or for a full fine-tune the SFT model itself."""
    from peft import PeftModel

    from ft_pipeline.evaluation.scoring import is_full_model, load_tokenizer
    from ft_pipeline.model.base_models import load_model_and_tokenizer
    from ft_pipeline.model.training import resolve_precision

    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(resolve_precision(precision), "float32")
    device = "cpu"
    if is_full_model(sft_dir):
        model, _ = load_model_and_tokenizer(sft_dir, dtype=dtype, device=device)
    else:
        base, _ = load_model_and_tokenizer(base_dir, dtype=dtype, device=device)
        model = PeftModel.from_pretrained(base, str(sft_dir), is_trainable=True)
    return model, load_tokenizer(sft_dir)


def to_trl(pairs: list[dict]) -> list[dict]:
    """Pairs in TRL's conversational explicit-prompt form, nothing else (provenance stays out of the batches)."""
    return [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]


def build_trainer(base_dir: Path, sft_dir: Path, pairs: list[dict], checkpoint_dir: Path, opts: PreferenceOptions,
                  run_name: str = "dpo", report_to_mlflow: bool = True, callbacks: list | None = None):
    from datasets import Dataset
    from trl import DPOTrainer

    if not pairs:
        raise ValueError("no preference pairs to train on")
    cpu_speed.keep_freed_memory()
    model, tok = load_policy(base_dir, sft_dir, opts.precision)
    args = dpo_config(opts, checkpoint_dir, run_name, report_to_mlflow)
    with cpu_speed.compact_lm_head():  # TRL computes the reference log-probabilities here when they are precomputed
        return cpu_speed.trainer_class(DPOTrainer)(model=model, ref_model=None, args=args,
                                                   train_dataset=Dataset.from_list(to_trl(pairs)),
                                                   processing_class=tok, callbacks=list(callbacks or []))


def train_preference(base_dir: Path, sft_dir: Path, pairs: list[dict], checkpoint_dir: Path, out_dir: Path,
                     opts: PreferenceOptions, run_name: str = "dpo", report_to_mlflow: bool = True,
                     on_log: Callable[[dict], None] | None = None,
                     on_trainer: Callable | None = None) -> PreferenceResult:
    """Train (or resume from the last complete checkpoint in `checkpoint_dir`) and save the DPO adapter (or
    model) with the SFT model's tokenizer to `out_dir`."""
    from transformers.trainer_callback import PrinterCallback

    from ft_pipeline.model.training import _Progress, last_complete_checkpoint

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = last_complete_checkpoint(checkpoint_dir)
    # TRL's DPOTrainer computes the reference log-probabilities while it is built, under its own tqdm bar:
    # the run's progress is on_log's, so that bar is off (TRL reads TQDM_DISABLE for it).
    hide = "TQDM_DISABLE" not in os.environ
    os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        trainer = build_trainer(Path(base_dir), Path(sft_dir), pairs, checkpoint_dir, opts, run_name,
                                report_to_mlflow, callbacks=[_Progress(on_log)])
    finally:
        if hide:
            del os.environ["TQDM_DISABLE"]
    trainer.remove_callback(PrinterCallback)
    if on_trainer:
        on_trainer(trainer)
    out = trainer.train(resume_from_checkpoint=last)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model = trainer.model
    if hasattr(model, "peft_config"):  # the trained adapter only: "ref" is TRL's frozen copy of the SFT one
        model.save_pretrained(str(out_dir), selected_adapters=["default"])
    else:
        model.save_pretrained(str(out_dir))
    trainer.processing_class.save_pretrained(str(out_dir))
    shutil.rmtree(checkpoint_dir)  # the adapter is saved: a new materialization starts fresh
    state = trainer.state
    return PreferenceResult(adapter_dir=out_dir, global_step=state.global_step, train_loss=float(out.training_loss),
                            train_runtime_s=float(out.metrics.get("train_runtime", 0)), resumed_from=last,
                            train_tokens=int(state.num_input_tokens_seen or 0), pairs=len(pairs),
                            log_history=list(state.log_history),
                            finetune="lora" if hasattr(model, "peft_config") else "full")
