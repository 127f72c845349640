"""Evaluation: base vs tuned vs the current champion on the same holdout, and the gate for promotion."""


import json

import dagster as dg

from ft_pipeline.config import CheckedConfig
from ft_pipeline.core import knobs
from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.resources import MlflowTracking, PipelineHome

OWNERS = ["team:ml-platform"]


class EvaluationConfig(CheckedConfig):
    KNOBS = knobs.EVALUATION
    max_new_tokens: int = 128
    """Upper bound on an answer's length; generation also stops at the longest reference answer plus a margin."""
    batch_size: int = 64
    max_examples: int = 0
    """Evaluate on the first N holdout examples only (0 = all)."""
    fixed_eval_path: str = "data/eval/support_handwritten.jsonl"
    """A fixed evaluation set scored beside the holdout (relative to the checkout, or absolute; empty: none)."""


@dg.asset(deps=["lora_adapter", "holdout_set"], group_name="evaluation", code_version="eval-v3",
          kinds={"pytorch", "mlflow"}, owners=OWNERS)
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, home: PipelineHome,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Holdout and fixed-set metrics of the base model, the tuned adapter and the current champion, the retention
    check, a markdown report, a per-example diff against the champion and plots."""
    import mlflow

    from ft_pipeline import settings
    from ft_pipeline.core import eval_run, evaluation, plots, registry, report as rep
    from ft_pipeline.core.tracking import log_jsonl_dataset

    adapter = json.loads(home.adapter_info.read_text())
    holdout = read_jsonl(home.split_dir / "holdout.jsonl")[: config.max_examples or None]
    fixed_path = settings.REPO_ROOT / config.fixed_eval_path if config.fixed_eval_path else None
    fixed = read_jsonl(fixed_path) if fixed_path else []
    mlflow_tracking.setup()
    name = mlflow_tracking.registered_model_name
    champ = registry.champion(name)
    loader = lambda: (lambda py: (py.model, py.tokenizer))(  # noqa: E731
        mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model())
    out = eval_run.evaluate_all(
        adapter["base"], adapter["adapter_dir"], holdout, fixed, home.root / "cache", config.max_new_tokens,
        config.batch_size, champion=(loader, (champ.tags or {}).get("eval.cache_key")) if champ else None,
        log=lambda what, n: context.log.info("evaluated %s: %d answers generated, the rest from cache", what, n))
    results = out["holdout"]
    diff = evaluation.champion_diff(holdout, results["tuned"]["per_example"],
                                    results["champion"]["per_example"]) if champ else None
    samples = rep.samples(holdout, results)
    report_md = rep.markdown_report(results, len(holdout), samples, diff, str(champ.version) if champ else None,
                                    fixed=out["fixed"], fixed_name=fixed_path.name if fixed_path else "",
                                    retention=out["retention"])
    metrics = {n: r["metrics"] for n, r in results.items()}
    report = {"training_run_id": adapter["training_run_id"], "model_uri": adapter["model_uri"],
              "model_id": adapter["model_id"], "holdout_examples": len(holdout),
              "champion_version": str(champ.version) if champ else None, "metrics": metrics,
              "fixed_metrics": {n: r["metrics"] for n, r in out["fixed"].items()},
              "retention_kl": (out["retention"] or {}).get("kl"), "max_new_tokens": out["max_new_tokens"],
              "tuned_cache_key": out["tuned_key"],
              # a champion trained on an erased row does not hold the gate back (core/erasure_registry.py)
              "champion_erasure_pending": (champ.tags or {}).get("erasure.pending") if champ else None,
              "vs_champion": diff["counts"] if diff else None}
    (home.reports_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (home.reports_dir / "evaluation.md").write_text(report_md)
    figures, plots_md = plots.evaluation_figures(mlflow.MlflowClient(), adapter["training_run_id"], metrics)
    with mlflow_tracking.start_run(context, "evaluate", "evaluation_report",
                                   parent_run_id=adapter["training_run_id"]) as (run, exp_id):
        manifest = json.loads((home.split_dir / "manifest.json").read_text())
        log_jsonl_dataset(home.split_dir / "holdout.jsonl", "holdout_set", "evaluation",
                          manifest["holdout_sha256"])
        rep.log_to_mlflow(results, report_md, samples, diff, figures, adapter["model_id"], out["fixed"],
                          out["retention"])
    kl = report["retention_kl"] or {}
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(report_md), "plots": dg.MetadataValue.md(plots_md),
        "holdout_examples": len(holdout), **{f"tuned_{k}": float(v) for k, v in metrics["tuned"].items()},
        **{f"base_{k}": float(metrics["base"][k]) for k in evaluation.GATE_METRICS + ("json_valid",)},
        **{f"fixed_tuned_{k}": float(v) for k, v in report["fixed_metrics"].get("tuned", {}).items()},
        **{f"retention_kl_{n}": float(v) for n, v in kl.items() if v is not None},
        "champion_version": str(champ.version) if champ else "none",
        **({f"vs_champion_{k}": v for k, v in diff["counts"].items()} if diff else {}),
        "report_file": dg.MetadataValue.path(str(home.reports_dir / "evaluation.md")),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class GateConfig(CheckedConfig):
    KNOBS = knobs.EVALUATION
    min_json_valid: float = 0.9
    min_gain_over_base: float = 0.05
    """The gate metric (field accuracy by default) must beat the base model's by at least this much."""
    max_loss_vs_champion: float = 0.0
    """The gate metric may fall below the champion's by at most this much (0 = must match or beat it)."""
    max_retention_kl: float | None = None
    """If set, the tuned model's retention KL (its divergence from the base on general prompts) must not exceed
    this: it may learn the task, but not forget how to answer everything else. Off by default (builtin:tiny's
    base is random)."""
    metric: str = "field_accuracy"
    """What must beat the base and hold against the champion: field_accuracy (structured output, the default),
    exact_match, chrf (0-100: set the margins in chrF points) or rouge_l, for free-text tasks."""


@dg.asset_check(asset=evaluation_report, blocking=True,
                description="The tuned model beats the base model and is at least as good as the champion.")
def beats_base_and_champion(config: GateConfig, home: PipelineHome) -> dg.AssetCheckResult:
    from ft_pipeline.core.evaluation import GATE_METRICS, gate_failures

    report = json.loads((home.reports_dir / "evaluation.json").read_text())
    m = report["metrics"]
    erased = report.get("champion_erasure_pending")
    gated = {k: v for k, v in m.items() if not (erased and k == "champion")}
    reasons = gate_failures(gated, config.min_json_valid, config.min_gain_over_base, config.max_loss_vs_champion,
                            config.metric, retention_kl=(report.get("retention_kl") or {}).get("tuned"),
                            max_retention_kl=config.max_retention_kl)
    return dg.AssetCheckResult(
        passed=not reasons, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(reasons) or "passes the gate" + (
            f" (the champion was trained on rows erased by {erased}: not compared)" if erased else ""),
        metadata={"gate_metric": config.metric, "max_retention_kl": config.max_retention_kl or -1.0,
                  "tuned_retention_kl": (report.get("retention_kl") or {}).get("tuned") or -1.0, "champion_version": report["champion_version"] or "none",
                  "tuned_json_valid": m["tuned"]["json_valid"],
                  **{f"{who}_{k}": m[who][k] if who in m else -1.0
                     for who in ("tuned", "base", "champion") for k in GATE_METRICS}})
