"""Supervised fine-tuning of a LoRA adapter with TRL's SFTTrainer and PEFT.

Loss is on assistant tokens only (the chat template's {% generation %} span); training resumes from the last
checkpoint in its checkpoint folder, so a killed run loses at most one checkpoint interval."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class TrainOptions:
    """Every knob of a training run. The defaults are the CPU run on builtin:tiny."""

    max_steps: int = 400
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-3  # high for LoRA on purpose: the tiny base is random, the adapter learns the task
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=lambda: ["embed_tokens", "lm_head"])
    max_length: int = 1024  # longer examples are quarantined upstream, never truncated silently here
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 10
    gradient_checkpointing: bool = False  # trades compute for memory; off for small models
    packing: bool = False
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, fp32 on CPU; or bf16 | fp16 | fp32
    trust_remote_code: bool = False

    def fingerprint(self) -> str:
        """Changes whenever a knob that affects the trained weights changes (logging and saving do not)."""
        knobs = {k: v for k, v in asdict(self).items() if k not in ("logging_steps", "save_steps", "save_total_limit")}
        return hashlib.sha256(json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]

    def to_params(self) -> dict:
        return {k: (",".join(v) if isinstance(v, list) else v) for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    adapter_dir: Path
    global_step: int
    train_loss: float
    train_runtime_s: float
    resumed_from: str | None
    train_tokens: int
    log_history: list[dict]


def resolve_precision(precision: str) -> str:
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def sft_config(opts: TrainOptions, checkpoint_dir: Path, run_name: str, report_to_mlflow: bool):
    """The one place TrainOptions become an SFTConfig."""
    import torch
    from trl import SFTConfig

    precision = resolve_precision(opts.precision)
    return SFTConfig(
        output_dir=str(checkpoint_dir), run_name=run_name, max_steps=opts.max_steps,
        per_device_train_batch_size=opts.per_device_train_batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps, learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=opts.warmup_steps, weight_decay=opts.weight_decay,
        max_grad_norm=opts.max_grad_norm, max_length=opts.max_length, seed=opts.seed, data_seed=opts.seed,
        save_strategy="steps", save_steps=opts.save_steps, save_total_limit=opts.save_total_limit,
        logging_steps=opts.logging_steps, activation_checkpointing=opts.gradient_checkpointing,
        gradient_checkpointing=opts.gradient_checkpointing,
        packing=opts.packing, assistant_only_loss=True,
        # Batches of similar length waste less compute on padding.
        train_sampling_strategy="group_by_length",
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        report_to=["mlflow"] if report_to_mlflow else [], disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", dataset_num_proc=None,
        model_init_kwargs={"dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32"),
                           "trust_remote_code": opts.trust_remote_code, "use_safetensors": True},
    )


def lora_config(opts: TrainOptions):
    from peft import LoraConfig

    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=opts.target_modules, modules_to_save=opts.modules_to_save or None,
                      task_type="CAUSAL_LM")


def to_dataset(records: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"messages": [{k: m[k] for k in ("role", "content", "weight") if k in m}
                                            for m in r["messages"]]} for r in records])


def build_trainer(base_dir: Path, train_records: list[dict], checkpoint_dir: Path, opts: TrainOptions,
                  run_name: str = "sft", report_to_mlflow: bool = True, callbacks: list | None = None):
    """An SFTTrainer for a LoRA adapter on `train_records` (loss on assistant tokens only)."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tok = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=opts.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return SFTTrainer(model=str(base_dir), args=sft_config(opts, checkpoint_dir, run_name, report_to_mlflow),
                      train_dataset=to_dataset(train_records), processing_class=tok,
                      peft_config=lora_config(opts), callbacks=callbacks or [])


class _Progress:
    """Forwards step logs with progress and ETA, and stops a diverging run with a clear error."""

    def __new__(cls, on_log):
        from transformers import TrainerCallback

        class Progress(TrainerCallback):
            def __init__(self):
                self.t0 = time.monotonic()

            def on_log(self, args, state, control, logs=None, **kwargs):
                loss = (logs or {}).get("loss")
                if loss is not None and not math.isfinite(loss):
                    raise FloatingPointError(f"training diverged: loss is {loss} at step {state.global_step}; "
                                             "lower the learning rate or check the data")
                if on_log and logs:
                    done = state.global_step / max(state.max_steps, 1)
                    elapsed = time.monotonic() - self.t0
                    eta = elapsed / done * (1 - done) if done > 0 else float("nan")
                    on_log({**logs, "step": state.global_step, "max_steps": state.max_steps, "eta_s": round(eta, 1)})

        return Progress()


def train_adapter(base_dir: Path, train_records: list[dict], checkpoint_dir: Path, adapter_dir: Path,
                  opts: TrainOptions, run_name: str = "sft", report_to_mlflow: bool = True,
                  on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume from the last checkpoint in `checkpoint_dir`) and save the adapter to `adapter_dir`."""
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(checkpoint_dir))
    trainer = build_trainer(base_dir, train_records, checkpoint_dir, opts, run_name, report_to_mlflow,
                            callbacks=[_Progress(on_log)])
    trainer.remove_callback(PrinterCallback)  # logs go to on_log (the Dagster run log) instead of stdout
    out = trainer.train(resume_from_checkpoint=last)
    adapter_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(adapter_dir))
    trainer.processing_class.save_pretrained(str(adapter_dir))
    # Checkpoints exist to survive a crash; once the adapter is saved, a new materialization starts fresh.
    shutil.rmtree(checkpoint_dir)
    return TrainResult(adapter_dir=adapter_dir, global_step=trainer.state.global_step,
                       train_loss=float(out.training_loss), train_runtime_s=float(out.metrics.get("train_runtime", 0)),
                       resumed_from=last, train_tokens=int(trainer.state.num_input_tokens_seen or 0),
                       log_history=list(trainer.state.log_history))
