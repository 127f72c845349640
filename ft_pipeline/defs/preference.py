"""Preference assets: the pairs of every preference drop (the raw folder's `preferences/`), and the DPO adapter
trained from the SFT adapter on them. With no pairs (or `enabled: false`) the DPO asset records why it did not
train, and the SFT adapter goes on to evaluation as it does without preference data."""


import hashlib
import json
from collections import Counter
from pathlib import Path

import dagster as dg
from pydantic import Field

from ft_pipeline.config import CheckedConfig, preset_defaults
from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.preference import training as pref_training
from ft_pipeline.preference.training import PreferenceOptions
from ft_pipeline.resources import MlflowTracking, PipelineHome, for_step, task_config

OWNERS = ["team:ml-platform"]
_DEFAULTS = PreferenceOptions(**preset_defaults("preference_adapter"))
PREFERENCE_FOLDER = "preferences"


def preference_dir(home: PipelineHome) -> Path:
    return Path(home.raw_dir) / PREFERENCE_FOLDER


def source_version(pref_dir: Path | None, erased: dict[str, str] | None = None) -> str:
    """A hash of the preference drops' names and contents, and of the erasure list once there is one: what
    preference_pairs was made from (None: that of no drops). An erasure request re-reads the pairs, as it
    re-ingests every SFT drop (erasure/requests.raw_data_version)."""
    from ft_pipeline.data.drop_files import find_drops
    from ft_pipeline.data.formats import sha256_file
    from ft_pipeline.erasure.requests import digest

    found = find_drops(pref_dir)[0] if pref_dir is not None else {}
    blob = "".join(f"{p.name}\0{sha256_file(p)}\n" for p in found.values())
    if erased:
        blob += f"erased\0{digest(erased)}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PreferencePairsConfig(CheckedConfig):
    KNOBS = pref_training.KNOBS
    holdout_fraction: float = 0.1
    """Share of prompts whose pairs are held out, by the same stable hash as the SFT split (all pairs of one
    prompt on one side); not used with holdout_drops."""
    holdout_drops: list[str] = []
    """Preference drops (partition keys) whose pairs are the holdout, every other drop's train: a DPO fine-tuning
    job's validation file. A holdout pair whose prompt has a train pair is removed as a duplicate."""
    seed: int = 0
    redact_pii: bool = True
    encoding: str = "utf-8"


@dg.asset(group_name="data", code_version="pairs-v2", kinds={"python", "json"}, owners=OWNERS,
          check_specs=[dg.AssetCheckSpec("pairs_accounted_for", asset="preference_pairs", blocking=True,
                                         description="for every preference drop: rows in = kept + quarantined + "
                                                     "duplicates + erased")])
def preference_pairs(context: dg.AssetExecutionContext, config: PreferencePairsConfig, home: PipelineHome,
                     mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Preference pairs (prompt, chosen, rejected) from every drop in the raw folder's preferences/: validated
    with line numbers, quarantined with reasons, redacted, deduplicated and split by prompt."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    import mlflow

    from ft_pipeline.data.drop_files import drop_key
    from ft_pipeline.data.errors import DropError
    from ft_pipeline.erasure.requests import erased_hashes
    from ft_pipeline.preference.pairs import build_pairs

    out = home.data("preference_pairs")
    erased = erased_hashes(home.root)
    try:
        manifest = build_pairs(preference_dir(home), out, holdout_fraction=config.holdout_fraction, seed=config.seed,
                               redact_pii=config.redact_pii, encoding=config.encoding, erased=erased,
                               holdout_drops=tuple(config.holdout_drops))
    except DropError as e:
        raise dg.Failure(description=str(e)) from e
    drops = {drop_key(n): d for n, d in manifest["drops"].items()}  # records name their drop by partition key
    # The check recounts the files on disk (every record names its drop), not the counts build_pairs returned.
    on_disk = {n: Counter() for n in drops}
    files_of = {"kept": ("train", "holdout"), "quarantined": ("quarantine",), "duplicates": ("duplicates",),
                "erased": ("erased",)}
    for kind, files in files_of.items():
        for f in files:
            for r in read_jsonl(out / f"{f}.jsonl"):
                on_disk.setdefault(r["drop"], Counter())[kind] += 1
    lost = {n: c for n, c in on_disk.items() if n not in drops or sum(c.values()) != drops[n]["rows_in"]}
    version = source_version(preference_dir(home), erased)
    with mlflow_tracking.start_run(context, "preference-pairs", "preference_pairs",
                                   tags={"dagster.data_version": version}) as (run, exp_id):
        mlflow.log_metrics({"pairs_train": manifest["train"], "pairs_holdout": manifest["holdout"],
                            "pairs_quarantined": sum(d["quarantined"] for d in drops.values()),
                            "pairs_duplicates": sum(d["duplicates"] for d in drops.values()),
                            "pairs_erased": sum(d["erased"] for d in drops.values())})
        mlflow.log_dict(manifest, "preference_manifest.json")
    check = dg.AssetCheckResult(
        check_name="pairs_accounted_for", passed=not lost, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(f"{n}: {drops.get(n, {}).get('rows_in', 0)} rows in, {c['kept']} kept + "
                              f"{c['quarantined']} quarantined + {c['duplicates']} duplicates + {c['erased']} erased "
                              "on disk"
                              + (": rows lost" if n in lost else "") for n, c in on_disk.items())
                    or "no preference drops",
        metadata={f"{n}_{k}": c[k] for n, c in on_disk.items() for k in files_of})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version), check_results=[check],
        metadata={"drops": len(drops), "pairs_train": manifest["train"], "pairs_holdout": manifest["holdout"],
                  "pairs_erased": sum(d["erased"] for d in drops.values()),
                  "quarantine_by_reason": dg.MetadataValue.json(manifest["quarantine_by_reason"]),
                  "per_drop": dg.MetadataValue.json(drops), "folder": dg.MetadataValue.path(str(preference_dir(home))),
                  "train_sha256": manifest["train_sha256"],
                  "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class PreferenceConfig(CheckedConfig):
    """DPO after SFT; the defaults are the defaults preset's (ft_pipeline/config.py); configs/cpu_smollm2_dpo.yaml
    turns it on for SmolLM2."""

    KNOBS = pref_training.KNOBS
    enabled: bool = Field(_DEFAULTS.enabled,
        description="false: do not preference-tune even when there are pairs "
                    "(the SFT adapter is evaluated and registered).")
    beta: float = Field(_DEFAULTS.beta,
        description="DPO's beta: how far the policy may move from the reference (the SFT model); "
                    "lower lets it move further.")
    loss_type: str = Field(_DEFAULTS.loss_type,
        description="sigmoid (DPO), ipo, hinge, robust, ... (TRL's loss names).")
    label_smoothing: float = Field(_DEFAULTS.label_smoothing,
        description="> 0 with sigmoid: conservative DPO, for preference labels that are sometimes wrong.")
    sft_weight: float = Field(_DEFAULTS.sft_weight, description=(
        "> 0: add the chosen answer's NLL with this weight (TRL's sft loss, as in RPO), so the model keeps "
        "writing the chosen answers while it learns to rank them."))
    precompute_ref_log_probs: bool = Field(_DEFAULTS.precompute_ref_log_probs,
        description="Compute the reference log-probabilities once before training rather than once per step.")
    max_steps: int = Field(_DEFAULTS.max_steps)
    learning_rate: float = Field(_DEFAULTS.learning_rate,
        description="DPO moves a tuned model with small steps: far below the SFT rate on a pretrained model.")
    per_device_train_batch_size: int = Field(_DEFAULTS.per_device_train_batch_size,
        description="Pairs a step (each is two sequences: chosen and rejected).")
    gradient_accumulation_steps: int = Field(_DEFAULTS.gradient_accumulation_steps)
    lr_scheduler_type: str = Field(_DEFAULTS.lr_scheduler_type)
    warmup_steps: int = Field(_DEFAULTS.warmup_steps)
    max_grad_norm: float = Field(_DEFAULTS.max_grad_norm)
    max_length: int = Field(_DEFAULTS.max_length, description="Prompt plus the longer answer, in tokens.")
    seed: int = Field(_DEFAULTS.seed)
    save_steps: int = Field(_DEFAULTS.save_steps,
        description="A killed run resumes from the last checkpoint, losing at most this many steps.")
    save_total_limit: int = Field(_DEFAULTS.save_total_limit)
    logging_steps: int = Field(_DEFAULTS.logging_steps)
    precision: str = Field(_DEFAULTS.precision)

    def options(self) -> PreferenceOptions:
        return PreferenceOptions(**self.model_dump())


def preference_info(home: PipelineHome) -> Path:
    return home.models_dir / "preference.json"


@dg.asset(deps=["lora_adapter", preference_pairs, "base_model"], group_name="model", code_version="dpo-v1",
          pool="gpu", kinds={"pytorch", "mlflow"}, owners=OWNERS)
def preference_adapter(context: dg.AssetExecutionContext, config: PreferenceConfig, home: PipelineHome,
                       mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The SFT adapter further trained with TRL's DPOTrainer on the preference pairs (reference: the SFT model),
    or, with no pairs or `enabled: false`, a record of why there is none."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    with home.pool_lock(context):
        return _preference_adapter(context, config, home, mlflow_tracking)


def _preference_adapter(context: dg.AssetExecutionContext, config: PreferenceConfig, home: PipelineHome,
                        mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    import mlflow

    from ft_pipeline.model.base_models import content_hash
    from ft_pipeline.preference.pairs import lineage_rows
    from ft_pipeline.preference.training import train_preference
    from ft_pipeline.registry import versions as registry
    from ft_pipeline.registry.tracking import log_jsonl_dataset

    adapter = json.loads(home.adapter_info.read_text())
    pairs_dir = home.data("preference_pairs")
    pairs = read_jsonl(pairs_dir / "train.jsonl") if (pairs_dir / "train.jsonl").exists() else []
    why_not = ("enabled: false in its config" if not config.enabled else
               "no preference pairs (no drops in the raw folder's preferences/)" if not pairs else None)
    if why_not:
        preference_info(home).write_text(json.dumps({"trained": False, "reason": why_not,
                                                     "sft_training_run_id": adapter["training_run_id"]}))
        context.log.info("preference tuning skipped: %s; the SFT adapter goes on", why_not)
        return dg.MaterializeResult(metadata={"trained": False, "skipped_because": why_not})
    opts = config.options()
    manifest = json.loads((pairs_dir / "manifest.json").read_text())
    sft_sha = content_hash(Path(adapter["adapter_dir"]))
    key = f"dpo-{manifest['train_sha256'][:12]}-{sft_sha[:12]}-{opts.fingerprint()}"
    out_dir = home.models_dir / "dpo_adapter"
    log = lambda d: context.log.info(  # noqa: E731
        "step %s/%s loss=%s margin=%s eta=%ss" % (d["step"], d["max_steps"], d.get("loss"), d.get("rewards/margins"),
                                                  d["eta_s"]))
    with mlflow_tracking.start_run(context, "dpo", "preference_adapter",
                                   tags={"training.stage": "dpo", "sft_training_run_id": adapter["training_run_id"],
                                         "data.pairs_sha256": manifest["train_sha256"][:16]}) as (run, exp_id):
        mlflow.log_params({f"dpo.{k}": v for k, v in opts.to_params().items()}
                          | {"base_model": adapter["base"]["spec"]})
        log_jsonl_dataset(pairs_dir / "train.jsonl", "preference_pairs", "training", manifest["train_sha256"])
        res = train_preference(Path(adapter["base"]["path"]), Path(adapter["adapter_dir"]), pairs,
                               home.checkpoints(key), out_dir, opts, run_name=f"dpo-{key}", on_log=log)
        final = {k: res.last(k)
                 for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")}
        mlflow.log_metrics({"final_train_loss": res.train_loss, "train_runtime_s": res.train_runtime_s,
                            "train_tokens": res.train_tokens})
        info = registry.log_adapter_model(out_dir, adapter["base"], finetune=adapter["finetune"])
        # Its lineage is the SFT rows it started from plus the pairs: `trained-on` and erasure see both.
        sft_rows = read_jsonl(home.split_dir / "train.jsonl")
        registry.log_lineage(sft_rows + lineage_rows(pairs, PREFERENCE_FOLDER),
                             json.loads((home.split_dir / "manifest.json").read_text()).get("drop_files"))
    pref = {"trained": True, "training_run_id": run.info.run_id, "experiment_id": exp_id,
            "model_uri": info.model_uri, "model_id": info.model_id, "adapter_dir": str(out_dir),
            "sft_training_run_id": adapter["training_run_id"], "pairs_train_sha256": manifest["train_sha256"],
            "global_step": res.global_step, "train_loss": res.train_loss, "final": final}
    preference_info(home).write_text(json.dumps(pref, indent=2))
    return dg.MaterializeResult(metadata={
        "trained": True, "adapter_dir": dg.MetadataValue.path(str(out_dir)), "model_uri": info.model_uri,
        "pairs": len(pairs), "global_step": res.global_step, "train_loss": res.train_loss,
        "train_tokens": res.train_tokens,
        "train_runtime_s": round(res.train_runtime_s, 1), "resumed_from": res.resumed_from or "",
        **{k.replace("/", "_"): v for k, v in final.items() if v is not None},
        "dpo_config": dg.MetadataValue.json(opts.to_params()),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})
