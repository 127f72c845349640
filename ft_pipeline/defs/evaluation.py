"""Evaluation: base vs tuned vs the current champion on the same holdout, and the gate for promotion."""


import json

import dagster as dg

from ft_pipeline.config import CheckedConfig, preset_defaults
from ft_pipeline.evaluation import run as eval_run
from ft_pipeline.evaluation.retention import PROMPTS
from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.resources import MlflowTracking, PipelineHome, for_step, task_config, task_preset

OWNERS = ["team:ml-platform"]


GATE_CHECK = "evaluation_report_beats_base_and_champion"
_EVAL, _GATE = preset_defaults("evaluation_report"), preset_defaults(GATE_CHECK)


class EvaluationConfig(CheckedConfig):
    KNOBS = eval_run.KNOBS
    max_new_tokens: int = _EVAL.get("max_new_tokens", 128)
    """Upper bound on an answer's length; generation also stops at the longest reference answer plus a margin."""
    batch_size: int = _EVAL.get("batch_size", 64)
    max_examples: int = _EVAL.get("max_examples", 0)
    """Evaluate on the first N holdout examples only (0 = all)."""
    fixed_eval_path: str = _EVAL.get("fixed_eval_path", "data/eval/support_handwritten.jsonl")
    """A fixed evaluation set scored beside the holdout (relative to the checkout, or absolute; empty: none)."""
    retention_prompts: int = _EVAL.get("retention_prompts", len(PROMPTS))
    """The retention check's general prompts to use: the first N of its 50 (0 = no retention check)."""
    baseline_kinds: list[str] = _EVAL.get("baseline_kinds", ["zero_shot", "few_shot", "dynamic"])
    """The prompting baselines (the base model with an instruction: zero_shot; with few_shot_k fixed training
    examples: few_shot; with each request's few_shot_k nearest training examples: dynamic). [] = none."""
    few_shot_k: int = _EVAL.get("few_shot_k", 5)
    """Training examples shown by the few-shot baselines (0 = zero-shot only)."""
    baseline_examples: int = _EVAL.get("baseline_examples", 0)
    """The baselines run on a fixed, seeded subset of this many holdout (and hand-written) examples (0 = all);
    the report compares every model on that subset, with 95% intervals."""
    baseline_instruction: str = _EVAL.get("baseline_instruction", "")
    """The baselines' system message; empty: the training data's most common system prompt, or one derived from
    the training answers (their JSON keys and the values of the keys with few)."""
    output_schema: str = _EVAL.get("output_schema", "")
    """The baselines also run constrained to a JSON Schema: "" the split's (data/split/output_schema.json, the one
    registered with the model), "off" none, or a file (relative to the checkout, or absolute)."""
    constrained_examples: int = _EVAL.get("constrained_examples", 0)
    """Every model also answers under the split's output schema (the registered one), on a seeded subset of this
    many holdout (and hand-written) examples, the baselines' subset at the same size (0 = all)."""


def gate_metric(context) -> str:
    """The gate's metric as this run configures it (the check's config, read from the run config, so the model
    picked for the gate is picked on the metric the gate then judges: one knob, not two)."""
    return _gate_config(context).get("metric") or GateConfig().metric


def gate_on(context) -> str:
    """Which answers the gate judges, free or constrained (the check's `gate_on`, read as gate_metric is)."""
    value = _gate_config(context).get("gate_on") or GateConfig().gate_on
    if (problem := eval_run.KNOBS["gate_on"].problem(value)) is not None:  # the check's config is built later
        raise dg.Failure(f"{GATE_CHECK}.config.gate_on: {problem}")
    return value


def gate_candidate(context) -> str:
    """How the model that goes to the gate is picked (the check's `candidate`, read as gate_metric is)."""
    value = _gate_config(context).get("candidate") or GateConfig().candidate
    if (problem := eval_run.KNOBS["candidate"].problem(value)) is not None:  # the check's config is built later
        raise dg.Failure(f"{GATE_CHECK}.config.candidate: {problem}")
    return value


def _gate_config(context) -> dict:
    ops = (context.run.run_config or {}).get("ops") or {}
    return {**task_preset(context, GATE_CHECK), **((ops.get(GATE_CHECK) or {}).get("config") or {})}


def _constrained_spec(config: EvaluationConfig, home: PipelineHome, adapter: dict, judged: str):
    """The constrained side's spec: the schema the registered version will carry (the split's, when the model
    trained on the split on disk), or none and why. Judging constrained answers without a schema is an error."""
    from ft_pipeline.data.output_schema import split_schema
    from ft_pipeline.evaluation.constrained import ConstrainedSpec

    schema, why = split_schema(home.split_dir, adapter["train_sha256"])
    if schema is None and judged == "constrained":
        raise dg.Failure(f"gate_on: constrained, but there is nothing to constrain the answers to: {why}")
    if schema is None:
        return ConstrainedSpec(None, why)
    info = json.loads((home.split_dir / "manifest.json").read_text())["output_schema"]
    on = f"{config.constrained_examples} examples of each set" if config.constrained_examples else "every example"
    return ConstrainedSpec(schema, f"Schema: the split's output_schema.json ({info['source']}, sha256 "
                                   f"{info['sha256'][:12]}), on {on}", config.constrained_examples)


def _dpo(home: PipelineHome, adapter: dict, context) -> dict | None:
    """The DPO adapter trained from this SFT adapter, or None (not trained, or trained from another one)."""
    from ft_pipeline.defs.preference import preference_info

    path = preference_info(home)
    pref = json.loads(path.read_text()) if path.exists() else {}
    if not pref.get("trained"):
        return None
    if pref["sft_training_run_id"] != adapter["training_run_id"]:
        context.log.warning("the DPO adapter was trained from another SFT adapter: left out; re-materialize "
                            "preference_adapter")
        return None
    return pref


def _baseline_spec(config: EvaluationConfig, home: PipelineHome):
    """The prompting baselines this run evaluates (None: none), on the training set the adapter was trained on."""
    from ft_pipeline import settings
    from ft_pipeline.evaluation.baseline_run import BaselineSpec, load_schema

    if not config.baseline_kinds:
        return None
    if config.output_schema == "off":
        schema_path = None
    elif config.output_schema:
        schema_path = settings.REPO_ROOT / config.output_schema
    else:  # the schema the split inferred from the train answers (or was given), registered with the model
        split_schema = home.split_dir / "output_schema.json"
        schema_path = split_schema if split_schema.exists() else None
    schema, note = load_schema(schema_path)
    return BaselineSpec(read_jsonl(home.split_dir / "train.jsonl"), tuple(config.baseline_kinds), config.few_shot_k,
                        config.baseline_examples, config.baseline_instruction, schema, note)


def _train_seconds(adapter: dict) -> float | None:
    """How long the adapter's training took: adapter.json's record, or (an adapter trained before it was
    recorded there) the training run's `train_runtime_s` metric in MLflow."""
    if adapter.get("train_runtime_s") is not None:
        return float(adapter["train_runtime_s"])
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_run(adapter["training_run_id"]).data.metrics.get("train_runtime_s")
    except MlflowException:  # the run is gone (another tracking store): the cost table says it lacks the figure
        return None


@dg.asset(deps=["lora_adapter", "preference_adapter", "holdout_set"], group_name="evaluation", code_version="eval-v6",
          kinds={"pytorch", "mlflow"}, owners=OWNERS)
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig, home: PipelineHome,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Holdout and fixed-set metrics of the base model, the SFT adapter ("tuned"), the DPO adapter when there is
    one, and the current champion; pair accuracy on the holdout preference pairs; the retention check; which
    model goes to the gate; a markdown report, a per-example diff against the champion and plots."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    import mlflow

    from ft_pipeline import settings
    from ft_pipeline.evaluation import constrained as cons
    from ft_pipeline.evaluation import cost, plots
    from ft_pipeline.evaluation import report as rep
    from ft_pipeline.evaluation import scoring as evaluation
    from ft_pipeline.registry import versions as registry
    from ft_pipeline.registry.tracking import log_jsonl_dataset

    adapter = json.loads(home.adapter_info.read_text())
    holdout = read_jsonl(home.split_dir / "holdout.jsonl")[: config.max_examples or None]
    fixed_path = settings.REPO_ROOT / config.fixed_eval_path if config.fixed_eval_path else None
    fixed = read_jsonl(fixed_path) if fixed_path else []
    constrained_spec = _constrained_spec(config, home, adapter, gate_on(context))
    mlflow_tracking.setup()
    name = mlflow_tracking.registered_model_name
    champ = registry.champion(name)
    dpo = _dpo(home, adapter, context)
    pairs_file = home.data("preference_pairs") / "holdout.jsonl"
    loader = lambda: (lambda py: (py.model, py.tokenizer))(  # noqa: E731
        mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model())
    out = eval_run.evaluate_all(
        adapter["base"], adapter["adapter_dir"], holdout, fixed, home.root / "cache", config.max_new_tokens,
        config.batch_size, champion=(loader, (champ.tags or {}).get("eval.cache_key")) if champ else None,
        log=lambda what, generated, total: context.log.info("evaluated %s: %s", what,
                                                            eval_run.answer_counts(generated, total)),
        progress=lambda what, done, total: context.log.info("evaluating %s: %d/%d answers", what, done, total),
        more={"dpo": dpo["adapter_dir"]} if dpo else None,
        pairs=read_jsonl(pairs_file) if pairs_file.exists() else None, retention_prompts=config.retention_prompts,
        baselines=_baseline_spec(config, home), constrained=constrained_spec)
    results = out["holdout"]
    constrained_entry = cons.report(out, holdout, fixed, constrained_spec)
    judged = cons.gate_metrics({"metrics": {n: r["metrics"] for n, r in results.items()},
                                "constrained": constrained_entry}, gate_on(context))
    erased = (champ.tags or {}).get("erasure.pending") if champ else None
    pick, why = evaluation.pick_candidate(judged, gate_metric(context), compare_champion=not erased,
                                          candidate=gate_candidate(context))
    context.log.info("gate candidate: %s (%s)", "DPO" if pick == "dpo" else "SFT", why)
    source = dpo if pick == "dpo" else adapter
    candidate = {"name": pick, "stage": "dpo" if pick == "dpo" else "sft", "why": why,
                 "training_run_id": source["training_run_id"], "model_uri": source["model_uri"],
                 "model_id": source["model_id"], "cache_key": out["keys"][pick]}
    diff = evaluation.champion_diff(holdout, results[pick]["per_example"],
                                    results["champion"]["per_example"]) if champ else None
    samples = rep.samples(holdout, results)
    prompting = cost.baselines_report(out["baselines"], results, out["fixed"], gate_metric(context),
                                      _train_seconds(adapter), pick) if out["baselines"] else None
    report_md = rep.markdown_report(results, len(holdout), samples, diff, str(champ.version) if champ else None,
                                    fixed=out["fixed"], fixed_name=fixed_path.name if fixed_path else "",
                                    retention=out["retention"], pair_accuracy=out["pair_accuracy"],
                                    candidate=candidate, baselines=prompting, constrained=constrained_entry)
    metrics = {n: r["metrics"] for n, r in results.items()}
    report = {"training_run_id": adapter["training_run_id"], "model_uri": adapter["model_uri"],
              "model_id": adapter["model_id"], "holdout_examples": len(holdout),
              "champion_version": str(champ.version) if champ else None, "metrics": metrics,
              "fixed_metrics": {n: r["metrics"] for n, r in out["fixed"].items()},
              "retention_kl": (out["retention"] or {}).get("kl"), "max_new_tokens": out["max_new_tokens"],
              "tuned_cache_key": out["tuned_key"], "candidate": candidate, "pair_accuracy": out["pair_accuracy"],
              # a champion trained on an erased row does not hold the gate back (erasure/registry.py)
              "champion_erasure_pending": erased,
              "vs_champion": diff["counts"] if diff else None, "baselines": prompting,
              "constrained": constrained_entry, "gate_on": gate_on(context)}
    (home.reports_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (home.reports_dir / "evaluation.md").write_text(report_md)
    figures, plots_md = plots.evaluation_figures(mlflow.MlflowClient(), adapter["training_run_id"], metrics)
    with mlflow_tracking.start_run(context, "evaluate", "evaluation_report",
                                   parent_run_id=adapter["training_run_id"]) as (run, exp_id):
        manifest = json.loads((home.split_dir / "manifest.json").read_text())
        log_jsonl_dataset(home.split_dir / "holdout.jsonl", "holdout_set", "evaluation",
                          manifest["holdout_sha256"])
        rep.log_to_mlflow(results, report_md, samples, diff, figures, candidate["model_id"], out["fixed"],
                          out["retention"], candidate=pick)
        mlflow.log_metrics({f"pair_accuracy.{n}": v for n, v in out["pair_accuracy"].items()})
        mlflow.log_metrics(cost.mlflow_metrics(prompting))
        mlflow.log_metrics(cons.flat_metrics(constrained_entry))
        if prompting:
            mlflow.log_dict(prompting, "baselines.json")
    kl = report["retention_kl"] or {}
    return dg.MaterializeResult(metadata={
        "report": dg.MetadataValue.md(report_md), "plots": dg.MetadataValue.md(plots_md),
        **({"was_tuning_worth_it": dg.MetadataValue.md("\n".join(cost.markdown(prompting)))} if prompting else {}),
        **({"best_baseline": prompting["best"]} if prompting and prompting["best"] else {}),
        **{f"cost_{k}": float(v) for k, v in ((prompting or {}).get("cost") or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "holdout_examples": len(holdout), **{f"tuned_{k}": float(v) for k, v in metrics["tuned"].items()},
        **{f"base_{k}": float(metrics["base"][k]) for k in evaluation.GATE_METRICS + ("json_valid",)},
        **{f"fixed_tuned_{k}": float(v) for k, v in report["fixed_metrics"].get("tuned", {}).items()},
        **{f"retention_kl_{n}": float(v) for n, v in kl.items() if v is not None},
        **({f"dpo_{k}": float(v) for k, v in metrics["dpo"].items()} if "dpo" in metrics else {}),
        **{f"pair_accuracy_{n}": float(v) for n, v in out["pair_accuracy"].items()},
        **cons.flat_metrics(constrained_entry, sep="_"), "gate_on": gate_on(context),
        "candidate": candidate["stage"], "candidate_why": why,
        "champion_version": str(champ.version) if champ else "none",
        **({f"vs_champion_{k}": v for k, v in diff["counts"].items()} if diff else {}),
        "report_file": dg.MetadataValue.path(str(home.reports_dir / "evaluation.md")),
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class GateConfig(CheckedConfig):
    KNOBS = eval_run.KNOBS
    min_json_valid: float = _GATE.get("min_json_valid", 0.9)
    min_gain_over_base: float = _GATE.get("min_gain_over_base", 0.05)
    """The gate metric (field accuracy by default) must beat the base model's by at least this much."""
    max_loss_vs_champion: float = _GATE.get("max_loss_vs_champion", 0.0)
    """The gate metric may fall below the champion's by at most this much (0 = must match or beat it)."""
    max_retention_kl: float | None = _GATE.get("max_retention_kl")
    """If set, the tuned model's retention KL (its divergence from the base on general prompts) must not exceed
    this: it may learn the task, but not forget how to answer everything else. 2.0 in the SmolLM2 presets; off
    (null) for builtin:tiny, whose base is random."""
    must_beat_prompting: bool = _GATE.get("must_beat_prompting", False)
    """If true, the candidate must beat the best prompting baseline (the base model with an instruction and
    few-shot examples, evaluation_report's baselines) on the gate metric, on the same holdout examples."""
    metric: str = _GATE.get("metric", "field_accuracy")
    """What must beat the base and hold against the champion: field_accuracy (structured output, the default),
    exact_match, chrf (0-100: set the margins in chrF points) or rouge_l, for free-text tasks."""
    gate_on: str = _GATE.get("gate_on", "free")
    """Which holdout answers the gate judges (and picks the candidate on): free (the default), or constrained,
    decoded under the split's output schema as a client asking for it gets them (evaluation_report's
    constrained side, on its constrained_examples)."""
    candidate: str = _GATE.get("candidate", "best")
    """Which model goes to the gate when DPO trained one: best, the DPO model only if it beats the SFT model and
    the champion on the gate metric; dpo, the DPO model (what a DPO fine-tuning job registers)."""


@dg.asset_check(asset=evaluation_report, blocking=True,
                description="The tuned model beats the base model and is at least as good as the champion.")
def beats_base_and_champion(context: dg.AssetCheckExecutionContext, config: GateConfig,
                            home: PipelineHome) -> dg.AssetCheckResult:
    home = for_step(context, home)
    config = task_config(context, config)
    from ft_pipeline.evaluation.constrained import gate_metrics
    from ft_pipeline.evaluation.scoring import GATE_METRICS, gate_failures, pick_candidate

    report = json.loads((home.reports_dir / "evaluation.json").read_text())
    if (judged := report.get("gate_on", "free")) != config.gate_on:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"the report picked its candidate on the {judged} answers, but "
                                               f"gate_on is {config.gate_on}: re-materialize evaluation_report with "
                                               "this config")
    if (m := gate_metrics(report, config.gate_on)) is None:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description="gate_on: constrained, but the report has no constrained answers: "
                                               f"{(report.get('constrained') or {}).get('note') or 'an old report'}")
    erased = report.get("champion_erasure_pending")
    # the SFT model ("tuned"), or the DPO model when it beat SFT and champion (a report of eval-v3 has no DPO)
    pick = (report.get("candidate") or {"name": "tuned"})["name"]
    if (again := pick_candidate(m, config.metric, not erased, config.candidate)[0]) != pick:
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                   description=f"the report picked {pick} for the gate, but on {config.metric} it "
                                               f"would be {again}: re-materialize evaluation_report with this config")
    gated = {"base": m["base"], "tuned": m[pick],
             **({"champion": m["champion"]} if "champion" in m and not erased else {})}
    reasons = gate_failures(gated, config.min_json_valid, config.min_gain_over_base, config.max_loss_vs_champion,
                            config.metric, retention_kl=(report.get("retention_kl") or {}).get(pick),
                            max_retention_kl=config.max_retention_kl)
    if config.must_beat_prompting:
        from ft_pipeline.evaluation.cost import prompting_failure

        if (why := prompting_failure(report.get("baselines"), pick, config.metric)) is not None:
            reasons.append(why)
    prompting = (report.get("baselines") or {}).get("holdout") or {}
    return dg.AssetCheckResult(
        passed=not reasons, severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(reasons) or "passes the gate" + (
            f" (the champion was trained on rows erased by {erased}: not compared)" if erased else ""),
        metadata={"gate_metric": config.metric, "gate_on": config.gate_on,
                  "candidate": "dpo" if pick == "dpo" else "sft",
                  "max_retention_kl": config.max_retention_kl or -1.0,
                  "tuned_retention_kl": (report.get("retention_kl") or {}).get("tuned") or -1.0,
                  "champion_version": report["champion_version"] or "none",
                  "tuned_json_valid": m["tuned"]["json_valid"], "must_beat_prompting": config.must_beat_prompting,
                  **({"best_baseline": report["baselines"]["best"]} if prompting.get("baselines") else {}),
                  **{f"{who}_{k}": m[who][k] if who in m else -1.0
                     for who in ("tuned", "dpo", "base", "champion") for k in GATE_METRICS}})
