"""One asset graph per task, in one Definitions (ft_pipeline/tasks.py says what a task is).

The default task is the graph as the stage modules define it: its keys, groups, jobs and sensor are unchanged.
Every other task gets a copy built by this factory: the same assets (the same ops: the same code), their keys
under the prefix `<task>/` (`routing/lora_adapter`; deps are rewritten with them), in a group named after the
task, its drops as a partitions definition of its own (`drops_<task>`), its own jobs (`<task>__train_and_register`)
and raw-drop sensor, and the automation conditions pointing at its own keys. A step finds its task from its key
prefix (resources.task_of) and reads and writes through the task's view of the one PipelineHome and
MlflowTracking: its raw folder, its home folder, its registered model. What must be shared is: the gpu pool (and
its lock on the home), the instance, the MLflow store, the automation sensor, backfills."""

import dagster as dg

from ft_pipeline import tasks
from ft_pipeline.defs import automation, data, evaluation, jobs, model, preference, registry, sensors
from ft_pipeline.defs.partitions import drops_for


def _graph(task: str) -> tuple[list, list]:
    """The task's assets (without automation) and asset checks, under its key prefix and in its group."""
    t = tasks.get(task)
    assets = [data.raw_examples, data.cleaned_examples, data.train_holdout_split, model.base_model,
              model.lora_adapter, preference.preference_pairs, preference.preference_adapter,
              evaluation.evaluation_report, registry.registered_model, registry.merged_model, registry.gguf_model]
    checks = [evaluation.beats_base_and_champion, data.no_near_duplicate_across_split]
    if t.is_default:
        return assets, checks
    rename = {k: dg.AssetKey([*t.key_prefix, *k.path]) for a in assets for k in a.keys}
    drops = drops_for(task)

    def for_task(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(group_name=t.ident,
                                       **({"partitions_def": drops} if spec.partitions_def is not None else {}))

    assets = dg.map_asset_specs(for_task, [a.with_attributes(asset_key_replacements=rename) for a in assets])
    return assets, [c.with_attributes(asset_key_replacements=rename) for c in checks]


def task_definitions(task: str) -> dg.Definitions:
    """Everything of one task: its assets with their automation, its checks, its jobs and its raw-drop sensor."""
    t = tasks.get(task)
    assets, checks = _graph(task)
    ingest, prefs, train = jobs.task_jobs(task) if not t.is_default else (
        jobs.ingest_drop_job, jobs.ingest_preferences_job, jobs.train_and_register_job)
    sensor = sensors.raw_drops_sensor if t.is_default else sensors.raw_drops_sensor_for(task, ingest, prefs)
    return dg.Definitions(assets=automation.with_automation(assets, t.key_prefix), asset_checks=checks,
                          jobs=[ingest, prefs, train], sensors=[sensor])


def all_task_definitions() -> list[dg.Definitions]:
    return [task_definitions(name) for name in tasks.all_tasks()]
