"""Registry: an MLflow Model Registry version of the adapter, promoted to `champion` after the gate passes."""


import json
import shutil

import dagster as dg

from ft_pipeline.resources import MlflowTracking, PipelineHome, for_step


@dg.asset(deps=["evaluation_report"], group_name="registry", code_version="register-v3", kinds={"mlflow"},
          owners=["team:ml-platform"])
def registered_model(context: dg.AssetExecutionContext, home: PipelineHome,
                     mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The adapter as a Model Registry version; runs only when the evaluation gate passed, and moves `champion`."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    import mlflow

    from ft_pipeline.erasure import registry as erasure_registry
    from ft_pipeline.erasure import requests as erasure
    from ft_pipeline.evaluation.constrained import gate_metrics
    from ft_pipeline.registry import versions as registry

    exp_id = mlflow_tracking.setup()
    adapter = json.loads(home.adapter_info.read_text())
    report = json.loads((home.reports_dir / "evaluation.json").read_text())
    if report["training_run_id"] != adapter["training_run_id"]:
        raise dg.Failure("the evaluation report is for another training run; re-materialize evaluation_report")
    cand = report["candidate"]  # the SFT adapter, or the DPO adapter trained from it when it won (evaluation_report)
    name = mlflow_tracking.registered_model_name
    pick = cand["name"]
    tags = {"training.stage": cand["stage"], "data_versions": json.dumps(adapter["data_versions"], sort_keys=True),
            "train_sha256": adapter["train_sha256"][:16], "base_model": adapter["base"]["spec"],
            "base_model_sha256": adapter["base"]["content_sha256"][:16], "dagster_run_id": context.run_id,
            "eval.cache_key": cand["cache_key"],
            **{f"eval.{k}": f"{v:.4f}" for k, v in report["metrics"][pick].items()},
            **({"eval.pair_accuracy": f"{report['pair_accuracy'][pick]:.4f}"}
               if pick in report.get("pair_accuracy", {}) else {}),
            **{f"eval.constrained.{k}": f"{v:.4f}"
               for k, v in (gate_metrics(report, "constrained") or {}).get(pick, {}).items()},
            "eval.gate_on": report.get("gate_on", "free"),
            **({"sft_training_run_id": adapter["training_run_id"]} if cand["stage"] == "dpo" else {}),
            **({"eval.retention_kl": f"{report['retention_kl'][pick]:.4f}"}
               if (report.get("retention_kl") or {}).get(pick) is not None else {})}
    previous = registry.champion(name)
    with mlflow_tracking.start_run(context, "register", "registered_model",
                                   parent_run_id=cand["training_run_id"]) as (run, _):
        mv, created = registry.register(cand["model_uri"], name, cand["training_run_id"], tags)
        schema = _output_schema(context, home, adapter["train_sha256"])
        schema_sha = registry.attach_output_schema(name, mv.version, cand["training_run_id"], schema)
        if schema is not None:
            mlflow.log_dict(schema, registry.OUTPUT_SCHEMA_ARTIFACT)
        registry.set_champion(name, mv.version)
        requests = erasure.load_requests(home.root)
        states = erasure_registry.refresh_tags(name, requests) if requests else []
        mlflow.log_params({"registered_model": name, "version": mv.version, "newly_registered": created,
                           "training_stage": cand["stage"],
                           "previous_champion": previous.version if previous else "none"})
    context.log.info("%s version %s of %s (%s); champion: %s -> %s", "registered" if created else "reused",
                     mv.version, name, cand["stage"].upper(), previous.version if previous else "none", mv.version)
    return dg.MaterializeResult(metadata={
        "registered_model": name, "version": int(mv.version), "alias": "champion", "training_stage": cand["stage"],
        "previous_champion": previous.version if previous else "none", "newly_registered": created,
        "model_uri": f"models:/{name}@champion", "training_run_id": cand["training_run_id"],
        "query": dg.MetadataValue.md(_query_md(name, mv.version)),
        "output_schema": dg.MetadataValue.json(schema) if schema else dg.MetadataValue.text("none"),
        **({"output_schema_sha256": schema_sha[:16]} if schema_sha else {}),
        "erasure_tags": dg.MetadataValue.json({s["version"]: {"contains": s["contains"], "clean_of": s["clean_of"]}
                                               for s in states}),
        "mlflow_model": dg.MetadataValue.url(f"{mlflow_tracking.ui_url.rstrip('/')}/#/models/{name}"
                                             f"/versions/{mv.version}"),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, cand["training_run_id"]))})


def _output_schema(context, home: PipelineHome, train_sha256: str) -> dict | None:
    """The split's output_schema.json when the split on disk is the one the model trained on (None without one,
    or, with a warning, when the split has changed since)."""
    from ft_pipeline.data.output_schema import SPLIT_CHANGED, split_schema

    schema, why = split_schema(home.split_dir, train_sha256)
    if why == SPLIT_CHANGED:
        context.log.warning("the split changed since training: the version is registered without an output schema")
    return schema


def _query_md(name: str, version) -> str:
    """How to ask this version something, shown with the materialization."""
    return (f"`make serve`, then any OpenAI client at `http://127.0.0.1:8000/v1` with model `{name}` (the champion,"
            f" followed as it moves) or `{name}/{version}` (this version):\n\n```bash\n"
            "curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            f"  -d '{{\"model\": \"{name}/{version}\", \"messages\": [{{\"role\": \"user\", "
            "\"content\": \"cancel my order please\"}], \"temperature\": 0}'\n```\n\n"
            f"In Python: `mlflow.pyfunc.load_model('models:/{name}/{version}').predict(['cancel my order please'])`")


@dg.asset(deps=[registered_model], group_name="registry", code_version="merge-v1", kinds={"pytorch", "mlflow"},
          owners=["team:ml-platform"])
def merged_model(context: dg.AssetExecutionContext, home: PipelineHome,
                 mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The champion with its adapter merged into the base: one safetensors model directory with tokenizer and
    chat template that loads without PEFT (`ft-pipeline export` writes the same for any version)."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    import mlflow

    from ft_pipeline.export import merged as export
    from ft_pipeline.model.base_models import content_hash

    name = mlflow_tracking.registered_model_name
    mlflow_tracking.setup()
    out, prov = export.export_registered(name, "champion", home.models_dir / "merged")
    sha = content_hash(out)
    size_mb = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    with mlflow_tracking.start_run(context, "merge", "merged_model",
                                   parent_run_id=prov["training_run_id"]) as (run, exp_id):
        mlflow.log_params({"registered_model": name, "version": prov["version"], "merged_dir": str(out),
                           "content_sha256": sha})
    context.log.info("merged %s version %s into %s (%.1f MB)", name, prov["version"], out, size_mb)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(out)), "registered_model": name, "version": int(prov["version"]),
        "content_sha256": sha, "size_mb": round(size_mb, 2),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


@dg.asset(deps=[registered_model], group_name="registry", code_version="gguf-v1", kinds={"gguf", "mlflow"},
          owners=["team:ml-platform"])
def gguf_model(context: dg.AssetExecutionContext, home: PipelineHome,
               mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The champion merged into one Q8_0 GGUF file with an Ollama Modelfile (`models/gguf/`, for llama.cpp,
    Ollama and LM Studio), logged with the version's training run and tagged on the version. A model GGUF cannot
    hold (another architecture, rope scaling) is recorded as skipped with the reason, not a failure."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    import mlflow

    from ft_pipeline.export.gguf import GgufExportError
    from ft_pipeline.export.gguf_bundle import export_gguf

    name = mlflow_tracking.registered_model_name
    mlflow_tracking.setup()
    try:
        meta = export_gguf(name, "champion", home.gguf_dir, "q8_0", "gguf", force=True)
    except GgufExportError as e:
        shutil.rmtree(home.gguf_dir, ignore_errors=True)  # the folder holds the champion's GGUF or nothing
        context.log.warning("no GGUF for the champion of %s: %s", name, e)
        return dg.MaterializeResult(metadata={"registered_model": name, "exported": False, "reason": str(e)})
    client, run_id, version = mlflow.MlflowClient(), meta["training_run_id"], meta["version"]
    client.log_artifacts(run_id, str(home.gguf_dir), "gguf")
    gguf = meta["files"]["model.gguf"]
    for key, value in {"gguf_file": f"runs:/{run_id}/gguf/model.gguf", "gguf_type": meta["type"],
                       "gguf_sha256": gguf["sha256"]}.items():
        client.set_model_version_tag(name, version, key, value)
    context.log.info("GGUF (%s) of %s version %s: %s (%.1f MB)", meta["type"], name, version,
                     home.gguf_dir / "model.gguf", gguf["size"] / 2**20)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(home.gguf_dir / "model.gguf")), "registered_model": name,
        "version": int(version), "exported": True, "type": meta["type"],
        "size_mb": round(gguf["size"] / 2**20, 2), "sha256": gguf["sha256"]})
