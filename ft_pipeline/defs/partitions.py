import dagster as dg

drops = dg.DynamicPartitionsDefinition(name="drops")
"""One partition per file in the raw data folder, keyed by file name."""
