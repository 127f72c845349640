"""Evaluation: base vs tuned vs the current champion on the same holdout, and the gate for promotion."""


import json

import dagster as dg

from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.resources import MlflowTracking, PipelineHome

OWNERS = ["team:ml-platform"]


class EvaluationConfig(dg.Config):
    max_new_tokens: int = 128
    batch_size: int = 64
    max_examples: int = 0
    """Evaluate on the first N holdout examples only (0 = all)."""


def _load(spec_path: str, adapter_dir: str | None):
    from peft import PeftModel

    from ft_pipeline.core.base_models import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(spec_path)
    if adapter_dir:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    return model, tok


@dg.asset(deps=["lora_adapter", "holdout_set"], group_name="evaluation", code_version="eval-v1",
          kinds={"pytorch", "mlflow"}, owners=OWNERS)
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, home: PipelineHome,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Holdout metrics of the base model, the tuned adapter and the current champion, with a markdown report."""
    import mlflow

    from ft_pipeline.core import evaluation, registry
    from ft_pipeline.core.tracking import log_jsonl_dataset

    adapter = json.loads(home.adapter_info.read_text())
    holdout = read_jsonl(home.split_dir / "holdout.jsonl")
    if config.max_examples:
        holdout = holdout[: config.max_examples]
    mlflow_tracking.setup()
    models = {"base": _load(adapter["base"]["path"], None), "tuned": _load(adapter["base"]["path"], adapter["adapter_dir"])}
    champ = registry.champion(mlflow_tracking.registered_model_name)
    if champ is not None:
        py = mlflow.pyfunc.load_model(f"models:/{mlflow_tracking.registered_model_name}@champion").unwrap_python_model()
        models["champion"] = (py.model, py.tokenizer)
    results = {}
    for name, (model, tok) in models.items():
        context.log.info("evaluating %s on %d holdout examples", name, len(holdout))
        results[name] = evaluation.evaluate(model, tok, holdout, config.max_new_tokens, config.batch_size)
    samples = [{"prompt": evaluation.prompt_messages(r)[-1]["content"], "reference": evaluation.reference(r),
                **{n: results[n]["per_example"][i]["prediction"] for n in results}} for i, r in enumerate(holdout[:8])]
    report_md = evaluation.markdown_report(results, len(holdout), samples)
    report = {"training_run_id": adapter["training_run_id"], "model_uri": adapter["model_uri"],
              "model_id": adapter["model_id"], "holdout_examples": len(holdout),
              "champion_version": str(champ.version) if champ else None,
              "metrics": {n: r["metrics"] for n, r in results.items()}}
    (home.reports_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (home.reports_dir / "evaluation.md").write_text(report_md)
    with mlflow_tracking.start_run(context, "evaluate", "evaluation_report",
                                   parent_run_id=adapter["training_run_id"]) as (run, exp_id):
        manifest = json.loads((home.split_dir / "manifest.json").read_text())
        log_jsonl_dataset(holdout, home.split_dir / "holdout.jsonl", "holdout_set", "evaluation",
                          manifest["holdout_sha256"])
        for name, r in results.items():
            mlflow.log_metrics({f"{name}.{k}": v for k, v in r["metrics"].items()})
        mlflow.log_metrics({f"eval.{k}": v for k, v in results["tuned"]["metrics"].items()}, model_id=adapter["model_id"])
        mlflow.log_text(report_md, "evaluation.md")
        mlflow.log_table({"prompt": [s["prompt"] for s in samples], "reference": [s["reference"] for s in samples],
                          **{n: [s[n] for s in samples] for n in results}}, "samples.json")
    tuned = results["tuned"]["metrics"]
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(report_md), "holdout_examples": len(holdout),
        **{f"tuned_{k}": float(v) for k, v in tuned.items()},
        **{f"base_{k}": float(results['base']['metrics'][k]) for k in ("json_valid", "field_accuracy", "exact_match")},
        "champion_version": str(champ.version) if champ else "none",
        "report_file": dg.MetadataValue.path(str(home.reports_dir / "evaluation.md")),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class GateConfig(dg.Config):
    min_json_valid: float = 0.9
    min_gain_over_base: float = 0.05
    """Field accuracy must beat the base model's by at least this much."""
    max_loss_vs_champion: float = 0.0
    """Field accuracy may fall below the champion's by at most this much (0 = must match or beat it)."""


@dg.asset_check(asset=evaluation_report, blocking=True,
                description="The tuned model beats the base model and is at least as good as the champion.")
def beats_base_and_champion(config: GateConfig, home: PipelineHome) -> dg.AssetCheckResult:
    from ft_pipeline.core.evaluation import gate_failures

    report = json.loads((home.reports_dir / "evaluation.json").read_text())
    m = report["metrics"]
    reasons = gate_failures(m, config.min_json_valid, config.min_gain_over_base, config.max_loss_vs_champion)
    return dg.AssetCheckResult(
        passed=not reasons, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(reasons) or "passes the gate",
        metadata={"tuned_field_accuracy": m["tuned"]["field_accuracy"], "base_field_accuracy": m["base"]["field_accuracy"],
                  "champion_field_accuracy": m["champion"]["field_accuracy"] if "champion" in m else -1.0,
                  "champion_version": report["champion_version"] or "none", "tuned_json_valid": m["tuned"]["json_valid"]})
