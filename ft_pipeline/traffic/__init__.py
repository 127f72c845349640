"""Production traffic: what the served champion was asked and answered, kept (opt-in) for review and for the
next round of training.

- `store`: the stored completions, one SQLite database under the home (`<home>/traffic/completions.db`), in WAL
  mode: a write is on disk before the server answers, a reader never blocks the writer, a crash mid-write loses
  nothing that was acknowledged. Retention, listing with OpenAI's filters, verdicts, deletion.
- `capture`: a completion as it is stored: personal data redacted with the data layer's rules (and counted),
  OpenAI's metadata limits, and the verdict a metadata update records (`review`, `correction`).
- `reviewed`: verdicts as a drop for the data layer (SFT rows) and preference pairs, with lineage (what the
  `reviewed_traffic` asset will write; the asset itself is not built yet).

Below both serving (which writes) and erasure (which forgets), so neither imports the other. Plain Python:
never imports dagster."""
