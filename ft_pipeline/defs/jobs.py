import dagster as dg

from ft_pipeline import tasks
from ft_pipeline.defs.partitions import drops_for

TRAIN_ASSETS = ("train_set", "holdout_set", "base_model", "lora_adapter", "preference_pairs", "preference_adapter",
                "evaluation_report", "registered_model", "merged_model", "gguf_model")


def job_name(task: str, job: str) -> str:
    """A task's job: `ingest_drop` for the default task, `<task>__ingest_drop` for another."""
    t = tasks.get(task)
    return job if t.is_default else f"{t.ident}__{job}"


def task_jobs(task: str) -> list:
    """The jobs of one task: ingest one drop, read the preference drops, train and register."""
    t = tasks.get(task)

    def keys(*names):
        return dg.AssetSelection.assets(*(dg.AssetKey([*t.key_prefix, n]) for n in names))

    of = "" if t.is_default else f" (task {t.name})"
    return [
        dg.define_asset_job(
            job_name(task, "ingest_drop"), selection=keys("raw_examples", "cleaned_examples"),
            partitions_def=drops_for(task),
            description=f"Parse, canonicalize and clean one raw drop (one partition){of}."),
        dg.define_asset_job(
            job_name(task, "ingest_preferences"), selection=keys("preference_pairs"),
            description="Read every preference drop (the raw folder's preferences/) into train and holdout "
                        f"pairs{of}."),
        dg.define_asset_job(
            job_name(task, "train_and_register"), selection=keys(*TRAIN_ASSETS),
            description="Split all cleaned drops, train the adapter (then DPO on preference pairs, if any), evaluate "
                        f"it and register it if it passes the gate{of}.",
            tags={"ft_pipeline/gpu": "true", "ft_pipeline/task": t.name}),
    ]


ingest_drop_job, ingest_preferences_job, train_and_register_job = task_jobs(tasks.DEFAULT)
