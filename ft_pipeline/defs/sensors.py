"""The raw-drop sensor: registers a partition for each new file in the raw folder and ingests new or changed
drops; a drop whose file disappeared is reported in the sensor's log and tick. New or changed preference drops
(the raw folder's preferences/) re-read preference_pairs."""


import json
from pathlib import Path

import dagster as dg

from ft_pipeline import tasks
from ft_pipeline.data import formats
from ft_pipeline.defs.jobs import ingest_drop_job, ingest_preferences_job
from ft_pipeline.defs.partitions import drops_for
from ft_pipeline.erasure import requests as erasure
from ft_pipeline.resources import PipelineHome


def scan_drops(raw_dir: Path, previous: dict) -> tuple[dict, list[str]]:
    """{drop: {"sha256", "mtime_ns", "size"}} for every valid drop file; the hash is reused when the file's
    size and mtime did not change. Keys are derived from the file names (data/drop_files.py). Also returns
    messages for files left out because another file has their key."""
    current = {}
    found, problems = formats.find_drops(raw_dir)
    for name, p in found.items():
        st = p.stat()
        old = previous.get(name)
        if old and old["mtime_ns"] == st.st_mtime_ns and old["size"] == st.st_size:
            current[name] = old
        else:
            current[name] = {"sha256": formats.sha256_file(p), "mtime_ns": st.st_mtime_ns, "size": st.st_size}
    return current, problems


def last_ingested_version(instance: dg.DagsterInstance, drop: str | None, asset: str = "raw_examples",
                          task: str = tasks.DEFAULT) -> str | None:
    """The data version of the latest materialization of `task`'s `asset` (the drop's partition of raw_examples:
    its file hash prefix; preference_pairs: the hash of its folder's files)."""
    key = dg.AssetKey([*tasks.get(task).key_prefix, asset])
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[drop] if drop else None), limit=1).records
    if not records:
        return None
    return records[0].asset_materialization.tags.get("dagster/data_version")


def raw_drops_sensor_for(task: str, ingest_job, preferences_job) -> dg.SensorDefinition:
    """The raw-drop sensor of one task: its raw folder, its drops partitions, its ingest jobs."""
    t = tasks.get(task)
    partitions = drops_for(task)

    @dg.sensor(name="raw_drops_sensor" if t.is_default else f"{t.ident}__raw_drops_sensor",
               jobs=[ingest_job, preferences_job], minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Watches the raw data folder" + ("" if t.is_default else f" of task {t.name}") +
                           ": new drops get a partition and are ingested; changed drops (new content hash) are "
                           "re-ingested; removed drops are reported; changed preference drops (preferences/) "
                           "re-read preference_pairs.")
    def _sensor(context: dg.SensorEvaluationContext, home: PipelineHome) -> dg.SensorResult:
        return _evaluate(context, home.for_task(task), task, partitions, ingest_job, preferences_job)

    return _sensor


def _evaluate(context, home: PipelineHome, task: str, partitions, ingest_job, preferences_job) -> dg.SensorResult:
    previous = json.loads(context.cursor) if context.cursor else {}
    current, problems = scan_drops(Path(home.raw_dir), previous)
    for msg in problems:
        context.log.warning(msg)
    known = set(context.instance.get_dynamic_partitions(partitions.name))
    new = sorted(set(current) - known)
    erased = erasure.erased_hashes(home.root)  # an erasure request changes every drop's data version
    version = {d: erasure.raw_data_version(c["sha256"], erased) for d, c in current.items()}
    changed = sorted(d for d in current
                     if d not in new and last_ingested_version(context.instance, d, task=task) != version[d])
    removed = sorted(d for d in known if d not in current)
    for d in removed:
        context.log.warning(f"drop {d} is registered but its file is gone from {home.raw_dir}; "
                            "the split skips it until it comes back")
    requests = [dg.RunRequest(run_key=f"{d}:{version[d]}", partition_key=d, job_name=ingest_job.name,
                              tags={"ft_pipeline/drop_sha256": current[d]["sha256"][:16]}) for d in new + changed]
    from ft_pipeline.defs.preference import PREFERENCE_FOLDER, source_version

    pref, last = source_version(Path(home.raw_dir) / PREFERENCE_FOLDER, erased), last_ingested_version(
        context.instance, None, "preference_pairs", task)
    if pref != last and (last is not None or pref != source_version(None, erased)):  # None: no folder, never read
        requests.append(dg.RunRequest(run_key=f"preferences:{pref}", job_name=preferences_job.name))
    return dg.SensorResult(
        run_requests=requests, cursor=json.dumps(current, sort_keys=True),
        dynamic_partitions_requests=[partitions.build_add_request(new)] if new else [],
        skip_reason=None if requests else f"no new or changed drops ({len(current)} watched, {len(removed)} removed)")


raw_drops_sensor = raw_drops_sensor_for(tasks.DEFAULT, ingest_drop_job, ingest_preferences_job)
