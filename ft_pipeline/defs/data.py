"""Data assets: one partition per raw drop (parse, canonicalize, clean), then one train/holdout split."""


import json
from collections import Counter

import dagster as dg

from ft_pipeline.core import cleaning, formats, splitting
from ft_pipeline.defs.partitions import drops
from ft_pipeline.jsonl import count_lines, read_jsonl, write_jsonl
from ft_pipeline.resources import MlflowTracking, PipelineHome

OWNERS = ["team:ml-platform"]


class RawExamplesConfig(dg.Config):
    format: str = "auto"
    """Example format of the drop: auto (detected from the rows), openai_chat, sharegpt, alpaca,
    prompt_completion or text."""


class CleaningConfig(dg.Config):
    redact_pii: bool = True
    """Replace emails, phone numbers, card numbers and IBANs with [EMAIL], [PHONE], [CARD], [IBAN]."""
    max_chars: int = 4000
    """Rows longer than this (all messages together) are quarantined, never truncated."""


def _table(rows: list[dict], columns: list[str]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: str(r.get(c, ""))[:200] for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]))


@dg.asset(partitions_def=drops, group_name="data", code_version="raw-v1", kinds={"python", "json"}, owners=OWNERS)
def raw_examples(context: dg.AssetExecutionContext, config: RawExamplesConfig, home: PipelineHome,
                 mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Every row of one raw drop as a canonical chat record with its provenance (drop, line, raw-row hash)."""
    path = home.raw_file(context.partition_key)
    try:
        parsed = formats.read_drop(path)
        fmt = formats.detect_format(parsed.rows, path) if config.format == "auto" else config.format
        if fmt not in formats.FORMATS:
            raise formats.DropError(f"{path}: unknown format {fmt!r} in config; expected auto or one of {formats.FORMATS}")
    except formats.DropError as e:
        raise dg.Failure(description=str(e), metadata={"file": dg.MetadataValue.path(str(path))}) from e
    import mlflow

    from ft_pipeline.core.tracking import log_jsonl_dataset

    records = cleaning.canonicalize(parsed, fmt)
    write_jsonl(home.data("raw_examples", context.partition_key), records)
    file_hash = parsed.sha256
    # What the records were made from, for cleaned_examples to record as its provenance.
    home.data("raw_examples", context.partition_key, suffix=".meta.json").write_text(
        json.dumps({"raw_sha256": file_hash, "format": fmt}))
    unconverted = Counter(r["code"] for r in records if "code" in r)
    with mlflow_tracking.start_run(context, f"raw-{context.partition_key}", "raw_examples",
                                   tags={"dagster.data_version": file_hash[:16]}) as (run, exp_id):
        mlflow.log_params({"drop": context.partition_key, "detected_format": fmt, "file_format": parsed.file_format,
                           "format_override": config.format})
        mlflow.log_metrics({"rows": len(records), "rows_not_converted": sum(unconverted.values())})
        log_jsonl_dataset(records, path, f"raw@{context.partition_key}", "raw", file_hash)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(file_hash[:16]),
        metadata={"file": dg.MetadataValue.path(str(path)), "detected_format": fmt, "file_format": parsed.file_format,
                  "rows": len(records), "rows_not_converted": sum(unconverted.values()),
                  "not_converted_by_reason": dg.MetadataValue.json(dict(unconverted)),
                  "raw_sha256": file_hash,
                  "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


@dg.asset(partitions_def=drops, deps=[raw_examples], group_name="data", code_version="clean-v1",
          kinds={"python", "json"}, owners=OWNERS,
          check_specs=[dg.AssetCheckSpec("rows_accounted_for", asset="cleaned_examples", blocking=True,
                                         description="rows in = kept + quarantined + duplicates")])
def cleaned_examples(context: dg.AssetExecutionContext, config: CleaningConfig, home: PipelineHome,
                     mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Cleaned JSONL of one drop (normalized, personal data redacted, deduplicated) plus its quarantine."""
    import mlflow

    from ft_pipeline.core.tracking import log_jsonl_dataset

    drop = context.partition_key
    records = read_jsonl(home.data("raw_examples", drop))
    result = cleaning.clean_records(records, cleaning.CleaningOptions(config.redact_pii, config.max_chars))
    paths = {k: home.data(k, drop) for k in ("cleaned", "quarantine", "duplicates")}
    write_jsonl(paths["quarantine"], result.quarantined)
    write_jsonl(paths["duplicates"], result.duplicates)
    write_jsonl(paths["cleaned"], result.kept)
    stats = result.stats()
    raw_sha = json.loads(home.data("raw_examples", drop, suffix=".meta.json").read_text())["raw_sha256"]
    # The check recounts the files on disk rather than trusting the in-memory lists it is checking.
    counted = {k: count_lines(p) for k, p in paths.items()}
    accounted = counted["cleaned"] + counted["quarantine"] + counted["duplicates"]
    check = dg.AssetCheckResult(
        check_name="rows_accounted_for", passed=accounted == len(records),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows_in": len(records), **{f"rows_{k}": v for k, v in counted.items()}})
    cleaned_hash = formats.sha256_file(paths["cleaned"])
    home.data("cleaned", drop, suffix=".stats.json").write_text(
        json.dumps({**stats, "raw_sha256": raw_sha, "cleaned_sha256": cleaned_hash}, indent=2))
    with mlflow_tracking.start_run(context, f"clean-{drop}", "cleaned_examples",
                                   tags={"dagster.data_version": cleaned_hash[:16]}) as (run, exp_id):
        mlflow.log_params({"drop": drop, "redact_pii": config.redact_pii, "max_chars": config.max_chars})
        mlflow.log_metrics({"rows_in": stats["rows_in"], "kept": stats["kept"], "quarantined": stats["quarantined"],
                            "duplicates": stats["duplicates"],
                            **{f"quarantined.{k}": v for k, v in stats["quarantined_by_reason"].items()},
                            **{f"pii.{k}": v for k, v in stats["pii_redacted_by_kind"].items()}})
        mlflow.log_dict(stats, "cleaning_stats.json")
        log_jsonl_dataset(result.kept, paths["cleaned"], f"cleaned@{drop}", "cleaned", cleaned_hash)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(cleaned_hash[:16]), check_results=[check],
        metadata={"cleaned_file": dg.MetadataValue.path(str(paths["cleaned"])),
                  "quarantine_file": dg.MetadataValue.path(str(paths["quarantine"])),
                  "rows_in": stats["rows_in"], "rows_kept": stats["kept"], "rows_quarantined": stats["quarantined"],
                  "rows_duplicate": stats["duplicates"],
                  "quarantined_by_reason": dg.MetadataValue.json(stats["quarantined_by_reason"]),
                  "pii_redacted_by_kind": dg.MetadataValue.json(stats["pii_redacted_by_kind"]),
                  "quarantine_sample": _table(result.quarantined[:10], ["line", "reason", "raw"]),
                  "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class SplitConfig(dg.Config):
    holdout_fraction: float = 0.1
    seed: int = 0
    """Changing the seed re-deals every example; keep it fixed so the holdout stays comparable over time."""


@dg.multi_asset(
    specs=[dg.AssetSpec("train_set", deps=[cleaned_examples], group_name="data", code_version="split-v1",
                        kinds={"python", "json"}, owners=OWNERS,
                        description="Training examples from every drop, deduplicated across drops."),
           dg.AssetSpec("holdout_set", deps=[cleaned_examples], group_name="data", code_version="split-v1",
                        kinds={"python", "json"}, owners=OWNERS,
                        description="Held-out examples, chosen by a stable hash so adding data never moves one.")],
)
def train_holdout_split(context: dg.AssetExecutionContext, config: SplitConfig, home: PipelineHome,
                        mlflow_tracking: MlflowTracking):
    import mlflow

    from ft_pipeline.core.tracking import log_jsonl_dataset

    cleaned, used, skipped = {}, {}, {}
    for drop in sorted(context.instance.get_dynamic_partitions(drops.name)):
        stats_path, raw = home.data("cleaned", drop, suffix=".stats.json"), home.raw_file(drop)
        if not stats_path.exists() or not raw.exists():
            skipped[drop] = "not cleaned" if raw.exists() else "raw file removed"
            continue
        recorded = json.loads(stats_path.read_text())
        if recorded["raw_sha256"] != formats.sha256_file(raw):
            skipped[drop] = "raw file changed since it was cleaned; re-materialize cleaned_examples"
            continue
        cleaned[drop] = read_jsonl(home.data("cleaned", drop))
        used[drop] = recorded["cleaned_sha256"][:16]
    if not cleaned:
        raise dg.Failure(f"no cleaned drop to split (skipped: {skipped or 'no drops registered'})")
    split = splitting.split_examples(cleaned, config.holdout_fraction, config.seed)
    out = home.split_dir
    write_jsonl(out / "train.jsonl", split.train)
    write_jsonl(out / "holdout.jsonl", split.holdout)
    write_jsonl(out / "cross_drop_duplicates.jsonl", split.cross_drop_duplicates)
    manifest = {"seed": config.seed, "holdout_fraction": config.holdout_fraction, "drops": used, "skipped": skipped,
                "train": len(split.train), "holdout": len(split.holdout),
                "cross_drop_duplicates": len(split.cross_drop_duplicates),
                "train_sha256": formats.sha256_file(out / "train.jsonl"),
                "holdout_sha256": formats.sha256_file(out / "holdout.jsonl")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with mlflow_tracking.start_run(context, "split", "train_set",
                                   tags={"dagster.data_version": manifest["train_sha256"][:16]}) as (run, exp_id):
        mlflow.log_params({"seed": config.seed, "holdout_fraction": config.holdout_fraction, "drops": ",".join(used)})
        mlflow.log_metrics({"train_examples": len(split.train), "holdout_examples": len(split.holdout),
                            "cross_drop_duplicates": len(split.cross_drop_duplicates)})
        mlflow.log_dict(manifest, "split_manifest.json")
        log_jsonl_dataset(split.train, out / "train.jsonl", "train_set", "train", manifest["train_sha256"])
        log_jsonl_dataset(split.holdout, out / "holdout.jsonl", "holdout_set", "holdout", manifest["holdout_sha256"])
    link = dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))
    for key, rows, sha in (("train_set", split.train, manifest["train_sha256"]),
                           ("holdout_set", split.holdout, manifest["holdout_sha256"])):
        yield dg.MaterializeResult(
            asset_key=key, data_version=dg.DataVersion(sha[:16]),
            metadata={"file": dg.MetadataValue.path(str(out / f"{key.split('_')[0]}.jsonl")), "examples": len(rows),
                      "drops": dg.MetadataValue.json(used), "skipped_drops": dg.MetadataValue.json(skipped),
                      "by_drop": dg.MetadataValue.json(dict(Counter(r["drop"] for r in rows))),
                      "manifest": dg.MetadataValue.path(str(out / "manifest.json")), "mlflow_run": link})
