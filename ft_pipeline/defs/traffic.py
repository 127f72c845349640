"""Production traffic back into the graph (issue 31): one partition a day.

- reviewed_traffic: the day's verdicts on stored completions become a drop in the raw folder
  (`<day>-reviewed_traffic.jsonl`, and preference pairs in `preferences/`), which the raw-drop sensor ingests
  like any other drop; the automation then re-splits and retrains as for any drop.
- traffic_drift: the day's stored prompts and answers against the train set and the holdout (traffic/drift.py),
  with a warning check past the preset's thresholds.

A schedule materializes yesterday's partition at 00:15 UTC. It runs by default: a home with no stored
completions gets an empty partition and no drop file. `ft-pipeline run` never selects these assets (it runs
ingest_drop and train_and_register)."""

import dataclasses

import dagster as dg

from ft_pipeline.config import CheckedConfig, preset_defaults
from ft_pipeline.defs.data import _png_markdown
from ft_pipeline.resources import PipelineHome
from ft_pipeline.traffic.drift import Thresholds

OWNERS = ["team:ml-platform"]
TRAFFIC_START = "2026-01-01"

_DRIFT = preset_defaults("traffic_drift")
traffic_days = dg.DailyPartitionsDefinition(start_date=TRAFFIC_START)
"""One partition per UTC day, by the day the verdict was given (reviewed_traffic) or the completion created."""


def _day_bounds(context: dg.AssetExecutionContext) -> tuple[int, int]:
    window = context.partition_time_window
    return int(window.start.timestamp()), int(window.end.timestamp())


@dg.asset(partitions_def=traffic_days, group_name="traffic", code_version="reviewed-v1", kinds={"python", "sqlite"},
          owners=OWNERS)
def reviewed_traffic(context: dg.AssetExecutionContext, home: PipelineHome) -> dg.MaterializeResult:
    """The day's reviewed stored completions as a drop: accepted -> SFT rows; corrected -> SFT rows with the
    correction and a preference pair (chosen: the correction, rejected: the model's answer); rejected -> counted,
    kept out of training. Every row carries its completion_id and the version that answered."""
    from pathlib import Path

    from ft_pipeline.traffic import reviewed as rv
    from ft_pipeline.traffic.store import CompletionStore, db_path

    day = context.partition_key
    db = db_path(home.root)
    done = []
    if db.exists():  # never create the database here: a home that serves nothing stays without one
        store = CompletionStore(db)
        try:
            done = store.reviewed(*_day_bounds(context))
        finally:
            store.close()
    out = rv.write_drop(done, day, Path(home.raw_dir))
    if not done:
        context.log.info(f"no verdicts given on {day}{'' if db.exists() else f' ({db} does not exist)'}; no drop")
    lineage = [{"completion_id": c["id"], "version": f"{c['registered_model']}/{c['version']}",
                "review": c["review"], "reviewer": c["reviewer"] or ""} for c in done[:50]]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(rv.drop_version(out)),
        metadata={"accepted": out["accepted"], "corrected": out["corrected"], "rejected": out["rejected"],
                  "sft_rows": out["sft_rows"], "preference_pairs": out["preference_pairs"],
                  "files": dg.MetadataValue.json(out["files"]), "store": dg.MetadataValue.path(str(db)),
                  "lineage": dg.MetadataValue.table(
                      records=[dg.TableRecord(r) for r in lineage],
                      schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in
                                                     ("completion_id", "version", "review", "reviewer")]))})



class DriftConfig(CheckedConfig):
    """The drift thresholds (the preset's ops.traffic_drift.config; calibrated on the demo data, docs/flywheel.md)."""

    neighbour_threshold: float = _DRIFT.get("neighbour_threshold", Thresholds.neighbour_threshold)
    """A train example is a prompt's near neighbour when their inputs' estimated Jaccard is at least this."""
    max_unseen_share: float = _DRIFT.get("max_unseen_share", Thresholds.max_unseen_share)
    """Warn when more of the day's prompts than this have no near neighbour in the train set."""
    max_length_psi: float = _DRIFT.get("max_length_psi", Thresholds.max_length_psi)
    """Warn when the prompt-length PSI against train is above this and the KS test's p-value below
    length_ks_alpha (a few prompts give a large PSI by chance: the KS test weighs the sample size)."""
    length_ks_alpha: float = _DRIFT.get("length_ks_alpha", Thresholds.length_ks_alpha)
    max_length_cut_rate: float | None = _DRIFT.get("max_length_cut_rate", Thresholds.max_length_cut_rate)
    """Warn when more answers than this were cut at max_tokens (finish_reason length)."""
    min_schema_valid_rate: float | None = _DRIFT.get("min_schema_valid_rate", Thresholds.min_schema_valid_rate)
    """Warn when fewer JSON answers than this parse and match their schema."""
    max_logprob_drop: float | None = _DRIFT.get("max_logprob_drop", Thresholds.max_logprob_drop)
    """Warn when the answers' mean log-probability per token is this much below the holdout's. Each of the three
    answer thresholds is off when null (a random model's answers say nothing: configs/cpu_tiny.yaml)."""
    min_prompts: int = _DRIFT.get("min_prompts", Thresholds.min_prompts)
    """A day with fewer prompts is measured and never flagged."""

    def thresholds(self) -> Thresholds:
        return Thresholds(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Thresholds)})


@dg.asset(partitions_def=traffic_days, group_name="traffic", code_version="drift-v1", kinds={"python", "sqlite"},
          owners=OWNERS, deps=[dg.AssetKey("train_set"), dg.AssetKey("evaluation_report")],
          check_specs=[dg.AssetCheckSpec("traffic_within_drift_thresholds", asset="traffic_drift", blocking=False,
                                         description="the day's traffic is within the drift thresholds (a warning)")])
def traffic_drift(context: dg.AssetExecutionContext, config: DriftConfig, home: PipelineHome) -> dg.MaterializeResult:
    """The day's stored prompts against the train set: the share with no near neighbour in it, the prompt-length
    shift (PSI, KS), the answers' schema-valid rate, `length` cut rate and mean log-probability against the
    holdout's; a warning check past the thresholds."""
    import json

    from ft_pipeline.data.lsh import NearDupParams
    from ft_pipeline.jsonl import read_jsonl
    from ft_pipeline.traffic import drift
    from ft_pipeline.traffic.store import CompletionStore, db_path

    th, db = config.thresholds(), db_path(home.root)
    completions = []
    if db.exists():
        store = CompletionStore(db)
        try:
            completions = store.created_between(*_day_bounds(context))
        finally:
            store.close()
    manifest_path, train_path = home.split_dir / "manifest.json", home.split_dir / "train.jsonl"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    params = NearDupParams(**(manifest.get("near_dup") or NearDupParams().to_json()))
    train = [drift.input_of(r["messages"]) for r in read_jsonl(train_path)] if train_path.exists() else []
    report_path = home.reports_dir / "evaluation.json"
    ref, ref_of = drift.reference_logprob(json.loads(report_path.read_text()) if report_path.exists() else None)
    report = drift.measure(completions, train, params, th, ref)
    flagged = drift.flags(report, th)
    png = drift.histogram_png(drift.lengths(train), drift.lengths([drift.input_of(c["messages"])
                                                                   for c in completions]))
    numbers = {k: v for k, v in report.items() if isinstance(v, (int, float)) and v is not None}
    check = dg.AssetCheckResult(
        check_name="traffic_within_drift_thresholds", passed=not flagged, severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(flagged) if flagged else (
            drift.not_judged(report, th) or f"within the thresholds ({report['prompts']} prompts)"),
        metadata={"flags": dg.MetadataValue.json(flagged), "thresholds": dg.MetadataValue.json(dataclasses.asdict(th))})
    return dg.MaterializeResult(
        check_results=[check],
        metadata={**numbers, "drifted": bool(flagged), "flags": dg.MetadataValue.json(flagged),
                  "holdout_logprob_of": ref_of, "unseen_examples": dg.MetadataValue.json(report["unseen_examples"]),
                  "thresholds": dg.MetadataValue.json(dataclasses.asdict(th)),
                  "prompt_length_histogram": _png_markdown(png, "prompt words: train and this day")})


traffic_daily_job = dg.define_asset_job(
    "traffic_daily", selection=dg.AssetSelection.groups("traffic"), partitions_def=traffic_days,
    description="One day of production traffic: the reviewed drop (and drift).")

traffic_daily_schedule = dg.build_schedule_from_partitioned_job(
    traffic_daily_job, hour_of_day=0, minute_of_hour=15, default_status=dg.DefaultScheduleStatus.RUNNING,
    description="At 00:15 UTC, yesterday's partition of the traffic assets.")

reevaluate_job = dg.define_asset_job(
    "reevaluate_on_traffic", selection=dg.AssetSelection.assets("train_set", "holdout_set", "evaluation_report"),
    description="Re-split (the reviewed traffic's share joins the holdout) and evaluate the adapter and the champion "
                "on it: what the drift sensor asks for.",
    tags={"ft_pipeline/gpu": "true"})


@dg.sensor(job=reevaluate_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="When a day of traffic_drift is past its thresholds, asks for a re-evaluation of the champion "
                       "on a holdout grown with the reviewed traffic (once per drifted day).")
def drift_reevaluation_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("traffic_drift"), after_storage_id=after), limit=100,
        ascending=True).records
    if not records:
        return dg.SensorResult(skip_reason="no new traffic_drift materialization", cursor=context.cursor)
    cursor = str(max(r.storage_id for r in records))
    drifted = sorted({r.partition_key for r in records if (m := r.asset_materialization.metadata.get("drifted"))
                      and m.value})
    if not drifted:
        return dg.SensorResult(skip_reason=f"{len(records)} day(s) measured, none drifted", cursor=cursor)
    if context.instance.get_latest_materialization_event(dg.AssetKey("evaluation_report")) is None:
        return dg.SensorResult(skip_reason=f"drift on {', '.join(drifted)}, but nothing was evaluated yet",
                               cursor=cursor)
    return dg.SensorResult(cursor=cursor, run_requests=[dg.RunRequest(
        run_key=f"drift:{','.join(drifted)}", tags={"ft_pipeline/drifted_days": ",".join(drifted)})])
