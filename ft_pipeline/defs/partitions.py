import functools

import dagster as dg

from ft_pipeline import tasks

drops = dg.DynamicPartitionsDefinition(name="drops")
"""One partition per file in the raw data folder, keyed by its file name, or a slug and hash of it for a name
that cannot be a key (data/drop_files.py)."""


@functools.cache
def drops_for(task: str) -> dg.DynamicPartitionsDefinition:
    """The drops of `task`: `drops` for the default task, `drops_<task>` for another (its raw folder's files)."""
    t = tasks.get(task)
    return drops if t.is_default else dg.DynamicPartitionsDefinition(name=f"drops_{t.ident}")
