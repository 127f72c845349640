"""Production traffic back into the graph (issue 31): one partition a day.

- reviewed_traffic: the day's verdicts on stored completions become a drop in the raw folder
  (`<day>-reviewed_traffic.jsonl`, and preference pairs in `preferences/`), which the raw-drop sensor ingests
  like any other drop; the automation then re-splits and retrains as for any drop.

A schedule materializes yesterday's partition at 00:15 UTC. It runs by default: a home with no stored
completions gets an empty partition and no drop file. `ft-pipeline run` never selects these assets (it runs
ingest_drop and train_and_register)."""

import dagster as dg

from ft_pipeline.resources import PipelineHome

OWNERS = ["team:ml-platform"]
TRAFFIC_START = "2026-01-01"

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


traffic_daily_job = dg.define_asset_job(
    "traffic_daily", selection=dg.AssetSelection.groups("traffic"), partitions_def=traffic_days,
    description="One day of production traffic: the reviewed drop (and drift).")

traffic_daily_schedule = dg.build_schedule_from_partitioned_job(
    traffic_daily_job, hour_of_day=0, minute_of_hour=15, default_status=dg.DefaultScheduleStatus.RUNNING,
    description="At 00:15 UTC, yesterday's partition of the traffic assets.")
