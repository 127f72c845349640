import dagster as dg

drops = dg.DynamicPartitionsDefinition(name="drops")
"""One partition per file in the raw data folder, keyed by its file name, or a slug and hash of it for a name
that cannot be a key (data/drop_files.py)."""
