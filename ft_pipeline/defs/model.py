"""Model assets: the base model as a local directory, and the LoRA adapter trained on the train set."""


import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg
from pydantic import field_validator, model_validator

from ft_pipeline import knobs, settings
from ft_pipeline.config import CheckedConfig, preset_defaults
from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.model import base_models, training
from ft_pipeline.model.training import TrainOptions
from ft_pipeline.resources import MlflowTracking, PipelineHome, for_step, task_config

OWNERS = ["team:ml-platform"]
_TRAIN_DEFAULTS = TrainOptions(**preset_defaults("lora_adapter"))
_BASE_DEFAULTS = preset_defaults("base_model")


class BaseModelConfig(CheckedConfig):
    KNOBS = base_models.KNOBS
    base_model: str = _BASE_DEFAULTS.get("base_model", base_models.BUILTIN_TINY)
    """smollm2-135m-instruct (the packaged model), gguf:/abs/path.gguf, builtin:tiny, an absolute local model
    directory, or a Hub id such as Qwen/Qwen2.5-0.5B-Instruct[@rev]."""
    seed: int = _BASE_DEFAULTS.get("seed", 0)
    """Seed of builtin:tiny's random init."""

    @field_validator("base_model")
    @classmethod
    def _resolvable(cls, spec: str) -> str:
        if problem := base_models.spec_problem(spec):
            raise ValueError(problem)
        return spec


@dg.asset(group_name="model", code_version="base-v2", kinds={"pytorch", "huggingface"}, owners=OWNERS)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig, home: PipelineHome,
               mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The base model as a local directory of safetensors weights and tokenizer, with its content hash."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    import mlflow

    from ft_pipeline.runs import control as runs

    # The base models' folder is shared by every task: one task at a time writes it.
    with runs.pool_lock(home.root, "base_models", context.asset_key.to_user_string(), context.run_id,
                        context.log.info):
        info = base_models.resolve_base_model(config.base_model, home.base_models_dir, seed=config.seed)
    home.base_info.write_text(json.dumps(info.to_json(), indent=2))
    cfg = json.loads((info.path / "config.json").read_text())
    with mlflow_tracking.start_run(context, "base-model", "base_model",
                                   tags={"dagster.data_version": info.content_sha256[:16]}) as (run, exp_id):
        mlflow.log_params({"spec": info.spec, "source": info.source, "revision": info.revision or "",
                           "content_sha256": info.content_sha256, "seed": config.seed})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(info.content_sha256[:16]),
        metadata={"spec": info.spec, "source": info.source, "path": dg.MetadataValue.path(str(info.path)),
                  "revision": info.revision or "", "content_sha256": info.content_sha256,
                  "architecture": ",".join(cfg.get("architectures", [])),
                  "hidden_size": cfg.get("hidden_size"), "layers": cfg.get("num_hidden_layers"),
                  "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class TrainConfig(CheckedConfig):
    """Training hyperparameters; the defaults are the defaults preset's (ft_pipeline/config.py: what `make run`
    trains, SmolLM2 on CPU; see configs/ for presets)."""

    KNOBS = training.KNOBS

    max_steps: int = _TRAIN_DEFAULTS.max_steps
    warm_start_steps: int = _TRAIN_DEFAULTS.warm_start_steps
    """> 0: a retrain continues the champion's LoRA adapter (same base and LoRA shape, no erased row in its
    lineage) for this many steps instead of training a new adapter for max_steps (registry/warm_start.py)."""
    per_device_train_batch_size: int = _TRAIN_DEFAULTS.per_device_train_batch_size
    gradient_accumulation_steps: int = _TRAIN_DEFAULTS.gradient_accumulation_steps
    learning_rate: float = _TRAIN_DEFAULTS.learning_rate
    lr_scheduler_type: str = _TRAIN_DEFAULTS.lr_scheduler_type
    warmup_steps: int = _TRAIN_DEFAULTS.warmup_steps
    weight_decay: float = _TRAIN_DEFAULTS.weight_decay
    max_grad_norm: float = _TRAIN_DEFAULTS.max_grad_norm
    finetune: str = _TRAIN_DEFAULTS.finetune
    """lora: train a LoRA adapter on the frozen base; full: train every weight and save a whole model."""
    lora_r: int = _TRAIN_DEFAULTS.lora_r
    lora_alpha: int = _TRAIN_DEFAULTS.lora_alpha
    lora_dropout: float = _TRAIN_DEFAULTS.lora_dropout
    target_modules: str = _TRAIN_DEFAULTS.target_modules
    modules_to_save: list[str] = _TRAIN_DEFAULTS.modules_to_save
    load_in_4bit: bool = _TRAIN_DEFAULTS.load_in_4bit
    """QLoRA: load the frozen base in 4-bit (needs bitsandbytes and a CUDA GPU)."""
    bnb_4bit_quant_type: str = _TRAIN_DEFAULTS.bnb_4bit_quant_type
    max_length: int = _TRAIN_DEFAULTS.max_length
    seed: int = _TRAIN_DEFAULTS.seed
    save_steps: int = _TRAIN_DEFAULTS.save_steps
    save_total_limit: int = _TRAIN_DEFAULTS.save_total_limit
    logging_steps: int = _TRAIN_DEFAULTS.logging_steps
    gradient_checkpointing: bool = _TRAIN_DEFAULTS.gradient_checkpointing
    group_by_length: bool = _TRAIN_DEFAULTS.group_by_length
    """Batch examples of similar length together, so little compute goes to padding."""
    packing: bool = _TRAIN_DEFAULTS.packing
    precision: str = _TRAIN_DEFAULTS.precision
    eval_steps: int = _TRAIN_DEFAULTS.eval_steps
    """Holdout loss every N steps (0 = never); needed by early stopping and load_best_model_at_end."""
    early_stopping_patience: int = _TRAIN_DEFAULTS.early_stopping_patience
    load_best_model_at_end: bool = _TRAIN_DEFAULTS.load_best_model_at_end
    trust_remote_code: bool = _TRAIN_DEFAULTS.trust_remote_code
    launcher: str = _TRAIN_DEFAULTS.launcher
    """in_process, subprocess, torchrun or accelerate (several processes / GPUs with num_processes)."""
    num_processes: int = _TRAIN_DEFAULTS.num_processes
    accelerate_config: str = _TRAIN_DEFAULTS.accelerate_config
    """With launcher accelerate: a config file, e.g. configs/accelerate/fsdp.yaml (relative to the checkout)."""

    @model_validator(mode="after")
    def _consistent(self):
        self.options()  # the combinations TrainOptions refuses (QLoRA + full, patience without eval, ...)
        if self.accelerate_config and not (settings.REPO_ROOT / self.accelerate_config).is_file():
            raise knobs.KnobError([("accelerate_config", f"no such file in the checkout: {self.accelerate_config}")])
        return self

    def options(self) -> TrainOptions:
        return TrainOptions(**self.model_dump())


def _train(context: dg.AssetExecutionContext, home: PipelineHome, opts, base: dict, key: str, train: list[dict],
           holdout: list[dict] | None, init_adapter: Path | None) -> dict:
    """Train in this process, or through ft_pipeline.model.train in a child process (torchrun / accelerate for several
    processes) whose step logs stream into this run's log and whose metrics land in the active MLflow run."""
    import mlflow

    from ft_pipeline import settings
    from ft_pipeline.model import launch

    log = lambda d: context.log.info(  # noqa: E731
        "step %s/%s loss=%s lr=%s eta=%ss" % (d["step"], d["max_steps"], d.get("loss"), d.get("learning_rate"),
                                              d["eta_s"]))
    ckpt, run_name = home.checkpoints(key), f"sft-{key}"
    if opts.launcher == "in_process":
        from ft_pipeline.model.train import result_to_json

        return result_to_json(training.train_adapter(base["path"], train, ckpt, home.adapter_dir, opts,
                                                     run_name=run_name, on_log=log, eval_records=holdout,
                                                     init_adapter=init_adapter))
    env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "MLFLOW_RUN_ID": mlflow.active_run().info.run_id}
    return launch.train_in_child(opts, Path(base["path"]), home.split_dir / "train.jsonl", ckpt, home.adapter_dir,
                                 result_json=home.models_dir / "train_result.json", run_name=run_name,
                                 repo_root=settings.REPO_ROOT,
                                 eval_jsonl=home.split_dir / "holdout.jsonl" if holdout is not None else None,
                                 on_log=log, on_line=context.log.debug, env=env, init_adapter=init_adapter)


def _warm_start(context, home: PipelineHome, mlflow_tracking: MlflowTracking, opts, base: dict):
    """The champion to continue (registry/warm_start.py), or None; the log says which and why."""
    from ft_pipeline.erasure import requests as erasure
    from ft_pipeline.registry import warm_start

    mlflow_tracking.setup()
    warm, why = warm_start.from_champion(mlflow_tracking.registered_model_name, base["content_sha256"], opts,
                                         erasure.erased_hashes(home.root), dst=home.warm_start_dir)
    context.log.info(why)
    return warm


@dg.asset(deps=["train_set", "holdout_set", base_model], group_name="model", code_version="train-v2", pool="gpu",
          kinds={"pytorch", "mlflow"}, owners=OWNERS)
def lora_adapter(context: dg.AssetExecutionContext, config: TrainConfig, home: PipelineHome,
                 mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """A LoRA adapter (or a fully fine-tuned model) trained with TRL's SFTTrainer on the train set, loss on
    assistant tokens only; the holdout set is used for holdout loss / early stopping when configured."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    with home.pool_lock(context):
        return _lora_adapter(context, config, home, mlflow_tracking)


def _lora_adapter(context: dg.AssetExecutionContext, config: TrainConfig, home: PipelineHome,
                  mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    import mlflow

    from ft_pipeline.registry import versions as registry
    from ft_pipeline.registry.tracking import log_jsonl_dataset

    base = json.loads(home.base_info.read_text())
    manifest = json.loads((home.split_dir / "manifest.json").read_text())
    train_path = home.split_dir / "train.jsonl"
    train = read_jsonl(train_path)
    opts = config.options()
    holdout = read_jsonl(home.split_dir / "holdout.jsonl") if opts.eval_steps > 0 else None
    # Checkpoints are keyed by what is trained on what, so a resume never mixes data or settings.
    key = f"{manifest['train_sha256'][:12]}-{base['content_sha256'][:12]}-{opts.fingerprint()}"
    if opts.accelerate_config:  # FSDP checkpoints are sharded: never resume one as a DDP run's, or back
        key += "-" + hashlib.sha256(opts.accelerate_config.encode()).hexdigest()[:8]
    # a full fine-tune has no adapter to continue: it always trains from the base
    warm = _warm_start(context, home, mlflow_tracking, opts, base) if opts.warm_start_steps and \
        opts.finetune == "lora" else None
    if warm is not None:
        opts, key = dataclasses.replace(opts, max_steps=opts.warm_start_steps), f"{key}-{warm.key}"
    with mlflow_tracking.start_run(context, "train", "lora_adapter",
                                   tags={"data.train_sha256": manifest["train_sha256"][:16],
                                         "base_model.content_sha256": base["content_sha256"][:16]}) as (run, exp_id):
        mlflow.log_params({f"train.{k}": v for k, v in opts.to_params().items()} | {"base_model": base["spec"]}
                          | {"warm_start_from": f"{mlflow_tracking.registered_model_name}/{warm.version}"
                                                if warm else ""})
        log_jsonl_dataset(train_path, "train_set", "training", manifest["train_sha256"])
        try:
            result = _train(context, home, opts, base, key, train, holdout, warm.adapter_dir if warm else None)
        finally:  # the copy is the champion's, still in the registry; a crash resumes from the checkpoints
            shutil.rmtree(home.warm_start_dir, ignore_errors=True)
        sup = result["supervision"]
        mlflow.log_metrics({"final_train_loss": result["train_loss"], "train_tokens": result["train_tokens"],
                            "train_runtime_s": result["train_runtime_s"],
                            "supervised_token_fraction": sup["supervised"] / sup["tokens"]}
                           | ({"best_eval_loss": result["best_eval_loss"]}
                              if result["best_eval_loss"] is not None else {}))
        info = registry.log_adapter_model(home.adapter_dir, base, finetune=opts.finetune)
        registry.log_lineage(train, manifest.get("drop_files"), inherited=warm.rows if warm else None)
    adapter = {"training_run_id": run.info.run_id, "experiment_id": exp_id, "model_uri": info.model_uri,
               "model_id": info.model_id, "adapter_dir": str(home.adapter_dir), "base": base,
               "train_sha256": manifest["train_sha256"], "data_versions": manifest["drops"],
               "global_step": result["global_step"], "train_loss": result["train_loss"], "finetune": opts.finetune,
               "train_runtime_s": result["train_runtime_s"],
               "warm_start_from": warm.version if warm else None}
    home.adapter_info.write_text(json.dumps(adapter, indent=2))
    return dg.MaterializeResult(metadata={
        "adapter_dir": dg.MetadataValue.path(str(home.adapter_dir)), "model_uri": info.model_uri,
        "finetune": opts.finetune, "train_loss": result["train_loss"], "global_step": result["global_step"],
        "train_tokens": result["train_tokens"], "train_runtime_s": round(result["train_runtime_s"], 1),
        "resumed_from": result["resumed_from"] or "", "warm_start_from": f"version {warm.version}" if warm else "",
        "supervised_token_fraction": round(sup["supervised"] / sup["tokens"], 4),
        "examples_without_supervised_tokens": sup["examples_without_supervision"],
        "train_config": dg.MetadataValue.json(opts.to_params()), "launcher": opts.launcher,
        "world_size": result["world_size"],
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id)),
        **({"best_eval_loss": result["best_eval_loss"]} if result["best_eval_loss"] is not None else {})})
