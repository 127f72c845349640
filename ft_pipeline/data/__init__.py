"""The data stage: drops in, training rows out. Reading a drop in any supported format (`formats`, `encodings`,
`drop_files`), cleaning and redacting it with every rejected row kept with its reason (`cleaning`), removing
duplicates exactly and by MinHash/LSH (`keys`, `near_dup`, `lsh`, `dedup`), the label conflicts (`conflicts`),
the token-length policy (`token_policy`) and the deterministic train/holdout split (`splitting`). Plain Python:
never imports dagster."""
