"""Supervised fine-tuning with TRL's SFTTrainer: a PEFT LoRA adapter (optionally on a 4-bit base: QLoRA) or a
full fine-tune.

Loss is on assistant tokens only (the chat template's {% generation %} span), and a check refuses to train when
no token or every token would carry loss (model/supervision.py); training resumes from the last checkpoint in its
checkpoint folder, so a killed run loses at most one checkpoint interval."""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ft_pipeline import knobs
from ft_pipeline.model import cpu_speed
from ft_pipeline.model.supervision import Supervision, check_supervision, tokenize

# Knobs that change how a run is logged, saved or launched, not the weights it trains.
_NOT_IN_FINGERPRINT = ("logging_steps", "save_steps", "save_total_limit", "launcher", "accelerate_config")


FINETUNE_MODES = ("lora", "full")
LAUNCHERS = ("in_process", "subprocess", "torchrun", "accelerate")
# The allowed values of TrainOptions' knobs (knobs.py), checked when a config is built.
KNOBS = {
    "max_steps": knobs.POSITIVE, "per_device_train_batch_size": knobs.POSITIVE,
    "gradient_accumulation_steps": knobs.POSITIVE,
    "warm_start_steps": knobs.NON_NEGATIVE,
    "learning_rate": knobs.Knob(gt=0, le=1), "lr_scheduler_type": knobs.Knob(choices=knobs.LR_SCHEDULERS),
    "warmup_steps": knobs.NON_NEGATIVE, "weight_decay": knobs.NON_NEGATIVE, "max_grad_norm": knobs.NON_NEGATIVE,
    "finetune": knobs.Knob(choices=FINETUNE_MODES), "lora_r": knobs.POSITIVE, "lora_alpha": knobs.POSITIVE,
    "lora_dropout": knobs.Knob(ge=0, lt=1), "bnb_4bit_quant_type": knobs.Knob(choices=("nf4", "fp4")),
    "max_length": knobs.POSITIVE,
    "seed": knobs.NON_NEGATIVE, "save_steps": knobs.POSITIVE, "save_total_limit": knobs.POSITIVE,
    "logging_steps": knobs.POSITIVE,
    "precision": knobs.PRECISION, "eval_steps": knobs.NON_NEGATIVE,
    "early_stopping_patience": knobs.NON_NEGATIVE,
    "launcher": knobs.Knob(choices=LAUNCHERS), "num_processes": knobs.POSITIVE,
}


@dataclass
class TrainOptions:
    """Every knob of a training run. The defaults are the CPU run on builtin:tiny."""

    max_steps: int = 400
    warm_start_steps: int = 0  # > 0: a LoRA retrain continues the champion's adapter this many steps (warm_start.py)
    per_device_train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-3  # high for LoRA on purpose: the tiny base is random, the adapter learns the task
    lr_scheduler_type: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    finetune: str = "lora"  # lora: train an adapter, base frozen; full: train every weight, save a whole model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] = field(default_factory=lambda: ["embed_tokens", "lm_head"])
    load_in_4bit: bool = False  # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), LoRA on top
    bnb_4bit_quant_type: str = "nf4"
    max_length: int = 1024  # longer examples are quarantined upstream, never truncated silently here
    seed: int = 0
    save_steps: int = 50
    save_total_limit: int = 2
    logging_steps: int = 10
    gradient_checkpointing: bool = False  # trades compute for memory; off for small models
    group_by_length: bool = True  # batches of similar length: little padding without packing
    packing: bool = False
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, fp32 on CPU; or bf16 | fp16 | fp32
    eval_steps: int = 0  # > 0: holdout loss every eval_steps steps (needs eval records)
    early_stopping_patience: int = 0  # > 0: stop after this many evaluations without a better holdout loss
    load_best_model_at_end: bool = False  # keep the checkpoint with the lowest holdout loss, not the last one
    trust_remote_code: bool = False
    launcher: str = "in_process"  # in_process | subprocess | torchrun | accelerate (see ft_pipeline.model.train)
    num_processes: int = 1  # processes (GPUs) for torchrun / accelerate; the global batch grows with it
    accelerate_config: str = ""  # an accelerate config file (e.g. configs/accelerate/fsdp.yaml); empty: DDP

    def __post_init__(self):
        knobs.check(asdict(self), KNOBS)
        found = []
        if self.load_in_4bit and self.finetune == "full":
            found.append(("load_in_4bit", "QLoRA trains a LoRA adapter on a frozen 4-bit base; set finetune: lora"))
        if self.num_processes > 1 and self.launcher not in ("torchrun", "accelerate"):
            found.append(("num_processes", f"{self.num_processes} processes need launcher torchrun or accelerate"))
        if (self.early_stopping_patience or self.load_best_model_at_end) and self.eval_steps <= 0:
            found.append(("eval_steps", "early stopping and load_best_model_at_end need eval_steps > 0 (holdout loss)"))
        elif self.load_best_model_at_end and self.save_steps % self.eval_steps:
            found.append(("save_steps", f"load_best_model_at_end needs save_steps ({self.save_steps}) to be a multiple "
                                        f"of eval_steps ({self.eval_steps}): "
                                        "only saved checkpoints can be the best one"))
        if found:
            raise knobs.KnobError(found)

    def fingerprint(self) -> str:
        """Changes whenever a knob that affects the trained weights changes (logging and saving do not)."""
        return knobs.fingerprint(self, _NOT_IN_FINGERPRINT)

    def to_json(self) -> dict:
        return asdict(self)

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
    supervision: Supervision | None = None
    finetune: str = "lora"
    best_checkpoint: str | None = None
    best_eval_loss: float | None = None


def resolve_precision(precision: str) -> str:
    import torch

    if precision != "auto":
        return precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def quantization_config(opts: TrainOptions):
    """A BitsAndBytesConfig for QLoRA, or None. Fails with a clear error where bitsandbytes or CUDA is missing."""
    if not opts.load_in_4bit:
        return None
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("load_in_4bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes "
                           "(on a Linux machine with a CUDA GPU); or use a LoRA preset without load_in_4bit")
    if not torch.cuda.is_available():
        raise RuntimeError("load_in_4bit (QLoRA) needs a CUDA GPU: bitsandbytes 4-bit training does not run on "
                           "this machine's CPU; use configs/cpu_tiny.yaml or a LoRA preset without load_in_4bit")
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_precision(opts.precision), torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=opts.bnb_4bit_quant_type,
                              bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True)


def sft_config(opts: TrainOptions, checkpoint_dir: Path, run_name: str, report_to_mlflow: bool,
               has_eval: bool = False):
    """The one place TrainOptions become an SFTConfig."""
    import torch
    from trl import SFTConfig

    precision = resolve_precision(opts.precision)
    init = {"dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32"),
            "trust_remote_code": opts.trust_remote_code, "use_safetensors": True}
    if (quant := quantization_config(opts)) is not None:
        init["quantization_config"] = quant
    evaluate = has_eval and opts.eval_steps > 0
    return SFTConfig(
        output_dir=str(checkpoint_dir), run_name=run_name, max_steps=opts.max_steps,
        per_device_train_batch_size=opts.per_device_train_batch_size,
        per_device_eval_batch_size=opts.per_device_train_batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps, learning_rate=opts.learning_rate,
        lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=opts.warmup_steps, weight_decay=opts.weight_decay,
        max_grad_norm=opts.max_grad_norm, max_length=opts.max_length, seed=opts.seed, data_seed=opts.seed,
        save_strategy="steps", save_steps=opts.save_steps, save_total_limit=opts.save_total_limit,
        logging_steps=opts.logging_steps, activation_checkpointing=opts.gradient_checkpointing,
        gradient_checkpointing=opts.gradient_checkpointing,
        # Examples arrive tokenized with their assistant mask (see `tokenize`), from which TRL builds the labels:
        # loss on assistant tokens only. TRL's own flag only applies to untokenized conversations.
        packing=opts.packing, assistant_only_loss=False,
        # Batches of similar length waste less compute on padding (packing makes this moot): shuffled length
        # buckets (model/cpu_speed.py), not transformers' sampler of the same name.
        train_sampling_strategy="group_by_length" if opts.group_by_length and not opts.packing else "random",
        eval_strategy="steps" if evaluate else "no", eval_steps=opts.eval_steps if evaluate else None,
        load_best_model_at_end=evaluate and (opts.load_best_model_at_end or opts.early_stopping_patience > 0),
        metric_for_best_model="eval_loss" if evaluate else None, greater_is_better=False if evaluate else None,
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=not torch.cuda.is_available(),
        report_to=["mlflow"] if report_to_mlflow else [], disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", dataset_num_proc=None,
        model_init_kwargs=init,
    )


def lora_config(opts: TrainOptions):
    """The LoRA adapter to train, or None for a full fine-tune."""
    if opts.finetune == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=opts.lora_dropout,
                      target_modules=opts.target_modules, modules_to_save=opts.modules_to_save or None,
                      task_type="CAUSAL_LM")


def to_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def load_tokenizer(base_dir: Path, opts: TrainOptions):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir), trust_remote_code=opts.trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _trainable(model, adapter_dir: Path, args):
    """For a warm start (registry/warm_start.py): the base (a path, or a model already loaded) with the adapter in
    `adapter_dir` loaded as trainable, for the SFTTrainer built with SFTConfig `args`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if isinstance(model, str):
        model = AutoModelForCausalLM.from_pretrained(model, **args.model_init_kwargs)
    args.model_init_kwargs = None  # used here: TRL would warn that it ignores them
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def build_trainer(base_dir: Path, train_records: list[dict], checkpoint_dir: Path, opts: TrainOptions,
                  run_name: str = "sft", report_to_mlflow: bool = True, callbacks: list | None = None,
                  eval_records: list[dict] | None = None, init_adapter: Path | None = None):
    """An SFTTrainer on `train_records` (loss on assistant tokens only, checked before training starts). With
    `init_adapter`, a saved LoRA adapter of this base, training continues from its weights (a warm start)
    instead of from a fresh adapter."""
    from transformers import EarlyStoppingCallback
    from trl import SFTTrainer

    cpu_speed.keep_freed_memory()
    tok = load_tokenizer(base_dir, opts)
    rows, supervision = tokenize(tok, train_records, opts.max_length)
    check_supervision(supervision)
    eval_ds = to_dataset(tokenize(tok, eval_records, opts.max_length)[0]) if eval_records else None
    args = sft_config(opts, checkpoint_dir, run_name, report_to_mlflow, has_eval=eval_ds is not None)
    callbacks = list(callbacks or [])
    if eval_ds is not None and opts.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=opts.early_stopping_patience))
    model = str(base_dir)
    if opts.load_in_4bit:
        model = _load_kbit_model(base_dir, args)
    peft_config = lora_config(opts)
    if init_adapter is not None:
        model, peft_config = _trainable(model, Path(init_adapter), args), None
    trainer = cpu_speed.trainer_class(SFTTrainer)(model=model, args=args, train_dataset=to_dataset(rows),
                                                  eval_dataset=eval_ds, processing_class=tok,
                                                  peft_config=peft_config, callbacks=callbacks)
    trainer.supervision = supervision
    return trainer


def _load_kbit_model(base_dir: Path, args):
    """A 4-bit base prepared for training (fp32 norms, input grads for checkpointing), as QLoRA needs."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), **args.model_init_kwargs)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)


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
                if on_log and logs and state.is_world_process_zero:
                    done = state.global_step / max(state.max_steps, 1)
                    elapsed = time.monotonic() - self.t0
                    eta = elapsed / done * (1 - done) if done > 0 else float("nan")
                    on_log({**logs, "step": state.global_step, "max_steps": state.max_steps, "eta_s": round(eta, 1)})

        return Progress()


class FsdpUnavailableError(RuntimeError):
    """The accelerate config asks for FSDP, but accelerate did not turn it on for this run."""


def check_fsdp(trainer) -> None:
    """Refuse to train when `accelerate launch` was given an FSDP config (ACCELERATE_USE_FSDP=true) that accelerate
    then ignored: accelerate 1.15 turns FSDP on only for GPU-like devices, and on CPU it runs the processes as plain
    DDP over gloo (MULTI_CPU), which would silently train unsharded."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not trainer.is_fsdp_enabled:
        raise FsdpUnavailableError(
            "the accelerate config asks for FSDP (distributed_type: FSDP), but accelerate did not enable it: "
            f"it runs these processes as {trainer.accelerator.distributed_type} "
            f"on {trainer.accelerator.device.type}. accelerate 1.15 enables FSDP only on GPUs (and other "
            "accelerators); on CPU it would train plain DDP and ignore every FSDP setting. On CPU, use launcher "
            "accelerate or torchrun without accelerate_config (accelerate launch without --config_file): DDP "
            "over gloo.")


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing (trainer_state.json is its last file), or None. A
    checkpoint a kill interrupted mid-write is removed: resuming from it would fail."""
    steps = {}
    for d in Path(checkpoint_dir).glob("checkpoint-*"):
        if d.is_dir() and d.name.removeprefix("checkpoint-").isdigit():
            steps[int(d.name.removeprefix("checkpoint-"))] = d
    for step in sorted(steps, reverse=True):
        if (steps[step] / "trainer_state.json").is_file():
            return str(steps[step])
        shutil.rmtree(steps[step])
    return None


def train_adapter(base_dir: Path, train_records: list[dict], checkpoint_dir: Path, adapter_dir: Path,
                  opts: TrainOptions, run_name: str = "sft", report_to_mlflow: bool = True,
                  on_log: Callable[[dict], None] | None = None, eval_records: list[dict] | None = None,
                  on_trainer: Callable | None = None, init_adapter: Path | None = None) -> TrainResult:
    """Train (or resume from the last checkpoint in `checkpoint_dir`) and save the adapter, or the whole model for
    a full fine-tune, to `adapter_dir`. `on_trainer(trainer)` sees the trainer before training starts;
    `init_adapter`: see build_trainer (a checkpoint to resume from takes precedence over it)."""
    from transformers.trainer_callback import PrinterCallback

    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    last = last_complete_checkpoint(checkpoint_dir)
    trainer = build_trainer(Path(base_dir), train_records, checkpoint_dir, opts, run_name, report_to_mlflow,
                            callbacks=[_Progress(on_log)], eval_records=eval_records, init_adapter=init_adapter)
    trainer.remove_callback(PrinterCallback)  # logs go to on_log (the Dagster run log) instead of stdout
    check_fsdp(trainer)
    if on_trainer:
        on_trainer(trainer)
    out = trainer.train(resume_from_checkpoint=last)
    if trainer.is_world_process_zero():
        adapter_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_fsdp_enabled:
        # Checkpoints may stay sharded (fsdp_state_dict_type: SHARDED_STATE_DICT), but Trainer.save_model then
        # writes no weights at all: gather the full state dict (every rank takes part) for the final save.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(adapter_dir))
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(str(adapter_dir))
        # Checkpoints exist to survive a crash; once the adapter is saved, a new materialization starts fresh.
        shutil.rmtree(checkpoint_dir)
    state = trainer.state
    return TrainResult(adapter_dir=adapter_dir, global_step=state.global_step,
                       train_loss=float(out.training_loss), train_runtime_s=float(out.metrics.get("train_runtime", 0)),
                       resumed_from=last, train_tokens=int(state.num_input_tokens_seen or 0),
                       log_history=list(state.log_history), supervision=trainer.supervision, finetune=opts.finetune,
                       best_checkpoint=state.best_model_checkpoint, best_eval_loss=state.best_metric)
