"""What `ft-pipeline run` has to materialize: only what is missing or stale, the way the Dagster UI shows it.

Staleness is Dagster's own (code versions and data versions, the "Unsynced" badge in the UI), resolved with the
same resolver the UI and the `stale_assets_only` schedules use. Two things Dagster does not track are added here:
a raw file whose bytes changed since its partition was ingested (compared with raw_examples' data version, the
file hash), and run config: an asset whose latest materialization ran with other `ops:` config than the preset
asks for is re-run (compared as written, so spelling out a default counts as a change)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ft_pipeline.data import formats

INGEST_ASSETS = ("raw_examples", "cleaned_examples")


def _resolver(instance: dg.DagsterInstance, defs: dg.Definitions):
    # Internal API, pinned with dagster==1.13.27: the resolver behind the UI's stale status and
    # RunRequest(stale_assets_only=True).
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    return CachingStaleStatusResolver(instance, defs.resolve_asset_graph(),
                                      LoadingContextForTest(instance)), StaleStatus


def _latest(instance: dg.DagsterInstance, key: str, partition: str | None = None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(key),
                              asset_partitions=[partition] if partition else None),
        limit=1).records
    return records[0] if records else None


def _config_changed(instance: dg.DagsterInstance, record, op_name: str, preset_ops: dict,
                    task: str = "default") -> bool:
    """Whether the step ran with other config than `preset_ops` gives it. A field the run's config left unset came
    from the task's preset (the config classes' defaults for the default task: resources.task_config), so the
    automation's runs, which set none, count as the task's preset and not as a change."""
    run = instance.get_run_by_id(record.run_id)
    used = ((((run.run_config or {}).get("ops") or {}).get(op_name) or {}).get("config") or {}) if run else {}
    want = (preset_ops.get(op_name) or {}).get("config") or {}
    base = _task_preset(task, op_name)
    return {**base, **used} != {**base, **want}


def _task_preset(task: str, op_name: str) -> dict:
    """The config a step of `task` takes for the fields its run's config leaves unset."""
    from ft_pipeline import config, tasks

    t = tasks.get(task)
    if t.is_default:
        return config.preset_defaults(op_name)
    return dict(((t.preset_ops().get(op_name) or {}).get("config")) or {})


def _why_stale(resolver, status_enum, key: str, partition: str | None = None) -> str | None:
    status = resolver.get_status(dg.AssetKey.from_user_string(key), partition)
    if status == status_enum.MISSING:
        return "never materialized"
    if status == status_enum.STALE:
        asset_key = dg.AssetKey.from_user_string(key)
        causes = resolver.get_stale_root_causes(asset_key, partition) or resolver.get_stale_causes(asset_key, partition)
        return "; ".join(sorted({f"{c.key.asset_key.to_user_string()}: {c.reason}" for c in causes})) or "stale"
    return None


def _key(task: str, name: str) -> str:
    """The user string of `task`'s asset `name` (`routing/raw_examples`; the default task's: `raw_examples`)."""
    from ft_pipeline import tasks

    return dg.AssetKey([*tasks.get(task).key_prefix, name]).to_user_string()


def drops_to_ingest(instance: dg.DagsterInstance, defs: dg.Definitions, found: dict[str, Path],
                    preset_ops: dict, task: str = "default") -> dict[str, str]:
    """{drop: why it must be (re-)ingested} for the drops in `found` (of `task`) that need it."""
    from ft_pipeline import settings
    from ft_pipeline.erasure import requests as erasure

    resolver, status = _resolver(instance, defs)
    erased = erasure.erased_hashes(settings.home())
    out = {}
    for drop, path in sorted(found.items()):
        raw = _latest(instance, _key(task, "raw_examples"), drop)
        if raw is None:
            out[drop] = "new drop"
        elif raw.asset_materialization.tags.get("dagster/data_version") != \
                erasure.raw_data_version(formats.sha256_file(path), erased):
            # the erasure list is part of the data version (erasure/requests.py)
            out[drop] = "file content changed or an erasure request" if erased else "file content changed"
        elif (why := _why_stale(resolver, status, _key(task, "raw_examples"), drop)
              or _why_stale(resolver, status, _key(task, "cleaned_examples"), drop)):
            out[drop] = why
        elif any(_config_changed(instance, _latest(instance, _key(task, k), drop) or raw, k, preset_ops, task)
                 for k in INGEST_ASSETS):
            out[drop] = "run config changed"
    return out


def _pairs_changed(record, task: str) -> str | None:
    """preference_pairs reads a folder Dagster does not track: compare its files with what it was made from."""
    from ft_pipeline import settings, tasks
    from ft_pipeline.defs.preference import PREFERENCE_FOLDER, source_version
    from ft_pipeline.erasure.requests import erased_hashes

    if record is None:
        return None
    made_from = record.asset_materialization.tags.get("dagster/data_version")
    raw_dir = tasks.get(task).raw_dir(settings.raw_dir())
    now = source_version(raw_dir / PREFERENCE_FOLDER, erased_hashes(settings.home()))
    return None if made_from == now else "preference drops or erasure requests changed"


# Run first, on their own: when they re-materialize with the same content (same data version), nothing
# downstream of them is stale and nothing retrains.
FIRST_STAGE = ("train_set", "holdout_set", "base_model", "preference_pairs")


def train_selection(instance: dg.DagsterInstance, defs: dg.Definitions, job_name: str, preset_ops: dict,
                    force: bool = False, only: tuple[str, ...] | None = None, task: str = "default") -> dict[str, str]:
    """{asset key: why it runs} for the assets of `job_name` (or of `only` among them, by name without the task's
    prefix) that are missing, stale or configured differently, plus everything downstream of them among those
    assets. Empty when nothing changed."""
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def(job_name)
    keys = [k.to_user_string() for k in job.asset_layer.selected_asset_keys
            if only is None or k.path[-1] in only]
    if force:
        return {k: "forced (--force)" for k in keys}
    resolver, status = _resolver(instance, defs)
    why: dict[str, str] = {}
    for key in keys:
        record = _latest(instance, key)
        op_name = graph.get(dg.AssetKey.from_user_string(key)).assets_def.op.name
        reason = _why_stale(resolver, status, key) or (
            _pairs_changed(record, task) if key == _key(task, "preference_pairs") else None)
        if reason is None and record is not None:
            checks = [c for c in preset_ops if c.startswith(f"{op_name}_")]  # the op's asset checks' config
            if any(_config_changed(instance, record, name, preset_ops, task) for name in (op_name, *checks)):
                reason = "run config changed"
        if reason:
            why[key] = reason
    # Downstream of anything that runs, within the job; evaluation and registration go together so the blocking
    # gate always judges the model that gets registered.
    selected = dg.AssetSelection.assets(*why).downstream().resolve(graph) if why else set()
    for k in sorted(k.to_user_string() for k in selected):
        if k in keys:
            why.setdefault(k, "downstream of a change")
    together = (_key(task, "evaluation_report"), _key(task, "registered_model"))
    if any(k in why for k in together):
        for k in together:
            why.setdefault(k, "evaluated and registered together")
    return why
