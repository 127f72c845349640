"""Warm starts: a retrain that continues the champion's LoRA adapter on the current train set for
`warm_start_steps` steps, instead of training a new adapter from the base for `max_steps`.

The champion qualifies when it is an SFT LoRA adapter of the same base model with the same LoRA shape, and none
of the rows it was trained on has been erased (its lineage holds its own warm start's rows too). The new
version's lineage is its train set plus the champion's lineage, so an erasure request finds every version an
erased row reached, and the next retrain after one starts from the base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# LoRA knobs that must match for the champion's adapter to be continued as this run's
SHAPE = ("finetune", "lora_r", "lora_alpha", "target_modules", "modules_to_save", "load_in_4bit")


@dataclass
class WarmStart:
    version: str
    adapter_dir: Path
    adapter_sha256: str
    rows: list[dict]  # the champion's lineage (registry.training_rows)

    @property
    def key(self) -> str:
        """What a checkpoint of a warm-started run is keyed by, beside its data and options."""
        return f"warm{self.adapter_sha256[:10]}"


def from_champion(name: str, base_sha256: str, opts, erased: dict[str, str],
                  dst: Path) -> tuple[WarmStart | None, str]:
    """(the champion to continue, "warm start: ...") or (None, "no warm start: why"; a new adapter is trained
    from the base). `opts` are this run's TrainOptions; `erased` is {raw_sha256: erasure request id}; the
    champion's adapter is downloaded into `dst` (emptied first), which the caller removes after training."""
    import shutil

    import mlflow

    from ft_pipeline.model.base_models import content_hash
    from ft_pipeline.registry import versions as registry

    mv = registry.champion(name)
    if mv is None:
        return None, "no warm start: no champion yet"
    tags, v = mv.tags or {}, str(mv.version)
    if tags.get("training.stage", "sft") != "sft":
        return None, f"no warm start: the champion (version {v}) is a {tags['training.stage']} adapter"
    if tags.get("base_model_sha256") != base_sha256[:16]:
        return None, f"no warm start: the champion (version {v}) was trained on another base model"
    params = mlflow.MlflowClient().get_run(tags["training_run_id"]).data.params
    mine = opts.to_params()
    differ = [k for k in SHAPE if params.get(f"train.{k}") != str(mine[k])]
    if differ:
        return None, f"no warm start: the champion's (version {v}) adapter differs in {', '.join(differ)}"
    rows = registry.training_rows(name, v)
    if hits := sorted({erased[r["raw_sha256"]] for r in rows if r["raw_sha256"] in erased}):
        return None, f"no warm start: the champion (version {v}) was trained on rows erased by {', '.join(hits)}"
    model_id = mv.source.removeprefix("models:/")
    root = mlflow.get_logged_model(model_id).artifact_location
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    adapter = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/artifacts/adapter", dst_path=str(dst)))
    return (WarmStart(v, adapter, content_hash(adapter), rows),
            f"warm start: continuing the champion (version {v}) for {opts.warm_start_steps} steps")
