"""Data assets: one partition per raw drop (parse, canonicalize, clean), then one train/holdout split."""


import json
from collections import Counter

import dagster as dg
from pydantic import field_validator

from ft_pipeline.config import CheckedConfig
from ft_pipeline.data import cleaning, formats, splitting
from ft_pipeline.data.bulk import no_cycle_gc
from ft_pipeline.data.erased import mark_erased
from ft_pipeline.data.near_dup import NearDupParams
from ft_pipeline.data.output_schema import OUTPUT_SCHEMA_FILE, SchemaFileError, check_output_schema
from ft_pipeline.data.token_policy import TooManyTokensError
from ft_pipeline.defs.partitions import drops, drops_for
from ft_pipeline.erasure import requests as erasure
from ft_pipeline.jsonl import count_lines, read_jsonl, write_jsonl
from ft_pipeline.model import base_models
from ft_pipeline.model.training import TrainOptions
from ft_pipeline.resources import MlflowTracking, PipelineHome, for_step, task_config, task_key, task_of

OWNERS = ["team:ml-platform"]


class RawExamplesConfig(CheckedConfig):
    KNOBS = splitting.KNOBS
    format: str = "auto"
    """Example format of the drop: auto (detected from the rows), openai_chat, sharegpt, alpaca,
    prompt_completion or text."""
    encoding: str = "utf-8"
    """Text encoding of the drop file (JSONL, JSON, CSV), e.g. cp1252, latin-1 or utf-16 for an export that is not
    UTF-8: the error of such a file names the likely one. Under utf-8 a row with a bad byte is quarantined."""


class NearDupConfig(CheckedConfig):
    KNOBS = splitting.KNOBS
    near_dup_threshold: float = 0.8
    """Examples whose inputs (system and user messages) have word-pair sets with an estimated Jaccard
    similarity at least this, and whose answers are the same, are near-duplicates: the later one is removed and
    recorded with the example it duplicates. 1.0 removes only identical sets. A different answer is never a
    duplicate."""
    near_dup_num_perm: int = 64
    """MinHash permutations: more gives a more precise similarity estimate, proportionally slower."""
    near_dup_ngram: int = 2
    """Compare examples on word n-grams of this size (case, punctuation and whitespace ignored)."""

    conflicts: str = "keep"
    """Rows with the same input and different answers (a label conflict), always reported: keep keeps them all;
    quarantine moves them all to the quarantine, naming each other; latest keeps the answer of the newest drop
    (within a drop, the last line) and records the others as duplicates of kind conflict_replaced."""

    def near_dup_params(self) -> NearDupParams:
        return NearDupParams(self.near_dup_threshold, self.near_dup_num_perm, self.near_dup_ngram)


class CleaningConfig(NearDupConfig):
    redact_pii: bool = True
    """Replace emails, phone numbers, card numbers and IBANs with [EMAIL], [PHONE], [CARD], [IBAN]."""
    max_chars: int = 4000
    """Rows longer than this (all messages together) are quarantined, never truncated."""


def _table(rows: list[dict], columns: list[str]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({c: str(r.get(c, ""))[:200] for c in columns}) for r in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]))


def _conflicts_check(found: list[dict], policy: str, **key) -> dg.AssetCheckResult:
    """The warning a label conflict raises (non-blocking): each conflict's rows and answers."""
    from ft_pipeline.data.conflicts import summary

    text = " | ".join(summary(c) for c in found[:5]) + (f" | and {len(found) - 5} more" if len(found) > 5 else "")
    return dg.AssetCheckResult(
        check_name="no_label_conflicts", passed=not found, severity=dg.AssetCheckSeverity.WARN, **key,
        description=(f"{len(found)} input(s) with different answers (conflicts={policy}): {text}" if found
                     else "no input has two different answers"),
        metadata={"conflicts": len(found), "conflict_rows": sum(len(c["rows"]) for c in found), "policy": policy,
                  "sample": dg.MetadataValue.json(found[:20])})


def _conflict_rows(found: list[dict]) -> dg.TableMetadataValue:
    return _table([{**r, "conflict": n} for n, c in enumerate(found[:20], 1) for r in c["rows"]],
                  ["conflict", "drop", "line", "answer", "outcome"])


_CONFLICTS_SPEC = dict(blocking=False, description="no input has two different answers (a label conflict); a "
                       "warning: the conflicts knob says what becomes of their rows")


@dg.asset(partitions_def=drops, group_name="data", code_version="raw-v2", kinds={"python", "json"}, owners=OWNERS)
def raw_examples(context: dg.AssetExecutionContext, config: RawExamplesConfig, home: PipelineHome,
                 mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Every row of one raw drop as a canonical chat record with its provenance (drop, line, raw-row hash)."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    path = home.raw_file(context.partition_key)
    try:
        parsed = formats.read_drop(path, config.encoding)
        fmt = formats.detect_format(parsed.rows, path) if config.format == "auto" else config.format
        if fmt not in formats.FORMATS:
            raise formats.DropError(f"{path}: unknown format {fmt!r} in config; "
                                    f"expected auto or one of {formats.FORMATS}")
    except formats.DropError as e:
        raise dg.Failure(description=str(e), metadata={"file": dg.MetadataValue.path(str(path))}) from e
    import mlflow

    from ft_pipeline.registry.tracking import log_jsonl_dataset

    unconverted = Counter()

    def counted(records):
        for rec in records:
            if "code" in rec:
                unconverted[rec["code"]] += 1
            yield rec

    raw_examples_path = home.data("raw_examples", context.partition_key)
    erased = erasure.erased_hashes(home.root)  # rows an erasure request names are written without their text
    # Records stream to the file, one at a time; the collector is paused while the parsed rows are alive.
    with no_cycle_gc():
        n_rows = write_jsonl(raw_examples_path,
                             counted(mark_erased(cleaning.iter_canonical(parsed, fmt), erased)))
    file_hash, file_format = parsed.sha256, parsed.file_format
    version = erasure.raw_data_version(file_hash, erased)
    del parsed
    # What the records were made from, for cleaned_examples to record as its provenance.
    home.data("raw_examples", context.partition_key, suffix=".meta.json").write_text(
        json.dumps({"raw_sha256": file_hash, "format": fmt, "file_name": path.name}, ensure_ascii=False))
    with mlflow_tracking.start_run(context, f"raw-{context.partition_key}", "raw_examples",
                                   tags={"dagster.data_version": version}) as (run, exp_id):
        mlflow.log_params({"drop": context.partition_key, "file_name": path.name, "detected_format": fmt,
                           "file_format": file_format,
                           "format_override": config.format, "encoding": config.encoding})
        mlflow.log_metrics({"rows": n_rows, "rows_not_converted": sum(unconverted.values())})
        log_jsonl_dataset(raw_examples_path, f"raw@{context.partition_key}", "raw", file_hash)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={"file": dg.MetadataValue.path(str(path)), "file_name": path.name, "detected_format": fmt,
                  "file_format": file_format,
                  "rows": n_rows, "rows_not_converted": sum(unconverted.values()),
                  "not_converted_by_reason": dg.MetadataValue.json(dict(unconverted)),
                  "raw_sha256": file_hash,
                  "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


@dg.asset(partitions_def=drops, deps=[raw_examples], group_name="data", code_version="clean-v3",
          kinds={"python", "json"}, owners=OWNERS,
          check_specs=[dg.AssetCheckSpec("rows_accounted_for", asset="cleaned_examples", blocking=True,
                                         description="rows in = kept + quarantined + duplicates + erased"),
                       dg.AssetCheckSpec("no_label_conflicts", asset="cleaned_examples", **_CONFLICTS_SPEC)])
def cleaned_examples(context: dg.AssetExecutionContext, config: CleaningConfig, home: PipelineHome,
                     mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Cleaned JSONL of one drop (normalized, personal data redacted, deduplicated) plus its quarantine."""
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    import mlflow
    import numpy as np

    from ft_pipeline.registry.tracking import log_jsonl_dataset

    drop = context.partition_key
    paths = {k: home.data(k, drop) for k in ("cleaned", "quarantine", "duplicates", "erased")}
    # Streamed: raw_examples' lines a chunk at a time, cleaned by worker processes side by side, the kept
    # records written to the cleaned file as they come.
    with open(home.data("raw_examples", drop), "rb") as raw_lines:
        result = cleaning.clean_stream(raw_lines, paths["cleaned"],
                                       cleaning.CleaningOptions(config.redact_pii, config.max_chars,
                                                                config.near_dup_params(), config.conflicts))
    write_jsonl(paths["quarantine"], result.quarantined)
    write_jsonl(home.data("conflicts", drop), result.conflicts)  # a report: its rows are counted where they went
    write_jsonl(paths["duplicates"], result.duplicates)
    write_jsonl(paths["erased"], result.erased)  # hashes and request ids only
    # The MinHash signatures of the kept rows' inputs, for the split to reuse (the same parameters only).
    np.save(home.data("cleaned", drop, suffix=".minhash.npy"), result.signatures)
    stats = {**result.stats(), "near_dup": config.near_dup_params().to_json(), "signatures_of": "input",
             "conflict_policy": config.conflicts}
    raw_sha = json.loads(home.data("raw_examples", drop, suffix=".meta.json").read_text())["raw_sha256"]
    # The check recounts the files on disk rather than trusting the in-memory lists it is checking.
    counted = {k: count_lines(p) for k, p in paths.items()}
    accounted = sum(counted.values())
    check = dg.AssetCheckResult(
        check_name="rows_accounted_for", passed=accounted == result.rows_in,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"rows in {result.rows_in} = " + " + ".join(f"{v} {k}" for k, v in counted.items()) +
        ("" if accounted == result.rows_in else f" = {accounted}: rows lost"),
        metadata={"rows_in": result.rows_in, **{f"rows_{k}": v for k, v in counted.items()}})
    cleaned_hash = formats.sha256_file(paths["cleaned"])
    version = erasure.cleaned_data_version(cleaned_hash, result.erased)
    home.data("cleaned", drop, suffix=".stats.json").write_text(
        json.dumps({**stats, "raw_sha256": raw_sha, "cleaned_sha256": cleaned_hash}, indent=2))
    with mlflow_tracking.start_run(context, f"clean-{drop}", "cleaned_examples",
                                   tags={"dagster.data_version": version}) as (run, exp_id):
        mlflow.log_params({"drop": drop, "redact_pii": config.redact_pii, "max_chars": config.max_chars,
                           "conflicts": config.conflicts, **config.near_dup_params().to_json()})
        mlflow.log_metrics({"rows_in": stats["rows_in"], "kept": stats["kept"], "quarantined": stats["quarantined"],
                            "duplicates": stats["duplicates"], "erased": stats["erased"],
                            "label_conflicts": stats["conflicts"],
                            **{f"quarantined.{k}": v for k, v in stats["quarantined_by_reason"].items()},
                            **{f"pii.{k}": v for k, v in stats["pii_redacted_by_kind"].items()}})
        mlflow.log_dict(stats, "cleaning_stats.json")
        log_jsonl_dataset(paths["cleaned"], f"cleaned@{drop}", "cleaned", cleaned_hash)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version), check_results=[check, _conflicts_check(result.conflicts,
                                                                                     config.conflicts)],
        metadata={"cleaned_file": dg.MetadataValue.path(str(paths["cleaned"])),
                  "quarantine_file": dg.MetadataValue.path(str(paths["quarantine"])),
                  "rows_in": stats["rows_in"], "rows_kept": stats["kept"], "rows_quarantined": stats["quarantined"],
                  "rows_duplicate": stats["duplicates"], "rows_erased": stats["erased"],
                  "duplicates_by_kind": dg.MetadataValue.json(stats["duplicates_by_kind"]),
                  "quarantined_by_reason": dg.MetadataValue.json(stats["quarantined_by_reason"]),
                  "pii_redacted_by_kind": dg.MetadataValue.json(stats["pii_redacted_by_kind"]),
                  "quarantine_sample": _table(result.quarantined[:10], ["line", "reason", "raw"]),
                  "label_conflicts": stats["conflicts"], "conflict_rows": _conflict_rows(result.conflicts),
                  "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))})


class SplitConfig(NearDupConfig):
    holdout_fraction: float = 0.1
    """Share of examples dealt to the holdout by their stable hash (not used with holdout_drops)."""
    holdout_drops: list[str] = []
    """Drops (partition keys) whose rows are the holdout, every other drop's rows train, instead of the hash's
    deal: a fine-tuning job's validation file (docs/finetuning.md). A holdout row that duplicates a train row is
    removed, as any cross-drop duplicate; a name that is no drop of the split fails it."""
    seed: int = 0
    """Changing the seed re-deals every example; keep it fixed so the holdout stays comparable over time."""
    stratify_by: str | None = None
    """Report the holdout share per stratum: a record field (`drop`, `format`) or `answer.<key>`, a key of the
    JSON answer (e.g. `answer.intent`). Sides stay a function of the example's hash, so they do not change."""
    max_tokens: int = TrainOptions().max_length
    """Longest example in tokens (base model's tokenizer and chat template); keep it equal to training's
    max_length so that nothing is truncated there."""
    on_too_long: str = "quarantine"
    """quarantine: longer examples go to split/too_long.jsonl with drop, line, token count and reason;
    fail: the split fails naming them."""
    output_schema: str = "auto"
    """The JSON Schema of the answers, registered with the model (and applied by `ft-pipeline serve
    --default-response-format registered`): auto infers it when every train answer is a JSON object (keys,
    types, nullable fields, enums of few-valued strings), off gives none, or a path to a JSON Schema file
    (relative to the checkout, or absolute) in OpenAI's strict subset."""

    @field_validator("output_schema")
    @classmethod
    def _schema_file(cls, value: str) -> str:
        try:
            check_output_schema(value)
        except SchemaFileError as e:
            raise ValueError(str(e)) from None
        return value

    def options(self) -> splitting.SplitOptions:
        return splitting.SplitOptions(self.holdout_fraction, self.seed, self.near_dup_params(), self.stratify_by,
                                      self.max_tokens, self.on_too_long, self.conflicts, self.output_schema,
                                      tuple(self.holdout_drops))


def _cleaned_drops(context: dg.AssetExecutionContext, home: PipelineHome, params: NearDupParams):
    """The cleaned files of every registered drop whose raw file is unchanged since it was cleaned, with
    their MinHash signatures where cleaning computed them with `params`."""
    import numpy as np

    cleaned, used, skipped, signatures, files = {}, {}, {}, {}, {}
    for drop in sorted(context.instance.get_dynamic_partitions(drops_for(task_of(context)).name)):
        stats_path, raw = home.data("cleaned", drop, suffix=".stats.json"), home.raw_file(drop)
        if not stats_path.exists() or not raw.exists():
            skipped[drop] = "not cleaned" if raw.exists() else "raw file removed"
            continue
        recorded = json.loads(stats_path.read_text())
        if recorded["raw_sha256"] != formats.sha256_file(raw):
            skipped[drop] = "raw file changed since it was cleaned; re-materialize cleaned_examples"
            continue
        cleaned[drop] = home.data("cleaned", drop)
        used[drop] = recorded["cleaned_sha256"][:16]
        files[drop] = raw.name  # the partition key is derived from it: the original name, for lineage
        sig_path = home.data("cleaned", drop, suffix=".minhash.npy")
        if recorded.get("near_dup") == params.to_json() and recorded.get("signatures_of") == "input" \
                and sig_path.exists():
            signatures[drop] = np.load(sig_path)
    if not cleaned:
        raise dg.Failure(f"no cleaned drop to split (skipped: {skipped or 'no drops registered'})")
    return cleaned, used, skipped, signatures, files


def _png_markdown(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


_SPLIT_SPEC = dict(deps=[cleaned_examples, dg.AssetKey("base_model")], group_name="data", code_version="split-v4",
                   kinds={"python", "json"}, owners=OWNERS)


@dg.multi_asset(
    specs=[dg.AssetSpec("train_set", **_SPLIT_SPEC,
                        description="Training examples from every drop, deduplicated across drops."),
           dg.AssetSpec("holdout_set", **_SPLIT_SPEC,
                        description="Held-out examples, chosen by a stable hash so adding data never moves one.")],
    check_specs=[dg.AssetCheckSpec("no_label_conflicts", asset="train_set", **_CONFLICTS_SPEC)],
)
def train_holdout_split(context: dg.AssetExecutionContext, config: SplitConfig, home: PipelineHome,
                        mlflow_tracking: MlflowTracking):
    home, mlflow_tracking = for_step(context, home, mlflow_tracking)
    config = task_config(context, config)
    import mlflow

    from ft_pipeline.registry.tracking import log_jsonl_dataset

    cleaned, used, skipped, signatures, files = _cleaned_drops(context, home, config.near_dup_params())
    if not home.base_info.exists():
        raise dg.Failure(f"{home.base_info} is missing: materialize base_model first (its tokenizer measures lengths)")
    tokenizer = base_models.load_tokenizer(json.loads(home.base_info.read_text())["path"])
    out = home.split_dir
    try:
        manifest = splitting.split_files(cleaned, out, config.options(), tokenizer, signatures, used, skipped, files)
    except (TooManyTokensError, SchemaFileError, splitting.HoldoutDropsError) as e:
        raise dg.Failure(description=str(e)) from e
    tokens, found = manifest["token_lengths"], read_jsonl(out / "conflicts.jsonl")
    with mlflow_tracking.start_run(context, "split", "train_set",
                                   tags={"dagster.data_version": manifest["train_sha256"][:16]}) as (run, exp_id):
        mlflow.log_params({"seed": config.seed, "holdout_fraction": config.holdout_fraction, "drops": ",".join(used),
                           "max_tokens": config.max_tokens, "on_too_long": config.on_too_long,
                           "conflicts": config.conflicts, "output_schema": config.output_schema,
                           "stratify_by": config.stratify_by or "", "holdout_drops": ",".join(config.holdout_drops),
                           **config.near_dup_params().to_json()})
        mlflow.log_metrics({"train_examples": manifest["train"], "holdout_examples": manifest["holdout"],
                            "cross_drop_duplicates": manifest["cross_drop_duplicates"],
                            "too_long": manifest["too_long"], "label_conflicts": manifest["conflicts"],
                            "quarantined_conflicts": manifest["quarantined_conflicts"],
                            **{k: v for k, v in tokens.items() if k.startswith("tokens_")}})
        mlflow.log_dict(manifest, "split_manifest.json")
        mlflow.log_artifact(str(out / "token_lengths.png"))
        if manifest["output_schema"]["sha256"]:
            mlflow.log_artifact(str(out / OUTPUT_SCHEMA_FILE))
        log_jsonl_dataset(out / "train.jsonl", "train_set", "train", manifest["train_sha256"])
        log_jsonl_dataset(out / "holdout.jsonl", "holdout_set", "holdout", manifest["holdout_sha256"])
    link = dg.MetadataValue.url(mlflow_tracking.run_url(exp_id, run.info.run_id))
    shared = {"drops": dg.MetadataValue.json(used), "drop_files": dg.MetadataValue.json(files),
              "skipped_drops": dg.MetadataValue.json(skipped),
              "holdout_drops": dg.MetadataValue.json(list(config.holdout_drops)),
              "rows_in": manifest["rows_in"], "too_long": manifest["too_long"],
              "cross_drop_duplicates": manifest["cross_drop_duplicates"],
              "too_long_file": dg.MetadataValue.path(str(out / "too_long.jsonl")),
              "label_conflicts": manifest["conflicts"], "quarantined_conflicts": manifest["quarantined_conflicts"],
              "conflict_rows": _conflict_rows(found),
              "conflicts_file": dg.MetadataValue.path(str(out / "conflicts.jsonl")),
              "token_lengths": dg.MetadataValue.json(tokens), **{k: v for k, v in tokens.items() if k != "examples"},
              "token_histogram": _png_markdown((out / "token_lengths.png").read_bytes(), "tokens per example"),
              "manifest": dg.MetadataValue.path(str(out / "manifest.json")), "mlflow_run": link,
              **_schema_metadata(manifest["output_schema"], out)}
    if config.stratify_by:
        shared["strata"] = dg.MetadataValue.json(manifest["strata"])
    for side in ("train", "holdout"):
        yield dg.MaterializeResult(
            asset_key=task_key(context, f"{side}_set"), data_version=dg.DataVersion(manifest[f"{side}_sha256"][:16]),
            metadata={"file": dg.MetadataValue.path(str(out / f"{side}.jsonl")), "examples": manifest[side],
                      "by_drop": dg.MetadataValue.json(manifest["by_drop"][side]), **shared})
    yield _conflicts_check(found, config.conflicts, asset_key=task_key(context, "train_set"))


def _schema_metadata(info: dict, out) -> dict:
    """The answers' JSON Schema as the split's metadata: the schema itself, where it came from and its hash, or
    why there is none."""
    if not info["sha256"]:
        return {"output_schema": dg.MetadataValue.text(f"none ({info.get('why_none', info['source'])})")}
    return {"output_schema": dg.MetadataValue.json(json.loads((out / OUTPUT_SCHEMA_FILE).read_text())),
            "output_schema_source": info["source"], "output_schema_sha256": info["sha256"][:16]}


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec("no_near_duplicate_across_split", asset=k, blocking=True,
                             description="No holdout example has a near-duplicate in train (MinHash LSH recomputed "
                                         "from the written files at the split's threshold)")
           for k in ("train_set", "holdout_set")])
def no_near_duplicate_across_split(context: dg.AssetCheckExecutionContext, home: PipelineHome):
    home = for_step(context, home)
    manifest = json.loads((home.split_dir / "manifest.json").read_text())
    params = NearDupParams(**(manifest["near_dup"] or NearDupParams().to_json()))
    train, holdout = (read_jsonl(home.split_dir / f"{n}.jsonl") for n in ("train", "holdout"))
    pairs = splitting.leaks(train, holdout, params)
    meta = {"pairs": len(pairs), "threshold": params.threshold, "train": len(train), "holdout": len(holdout),
            "offending_pairs": dg.MetadataValue.json(pairs[:50])}
    text = "; ".join(f"holdout {p['holdout']['drop']} line {p['holdout']['line']} ~ train {p['train']['drop']} "
                     f"line {p['train']['line']} ({p['similarity']:.2f})" for p in pairs[:10])
    for key in ("train_set", "holdout_set"):
        yield dg.AssetCheckResult(asset_key=task_key(context, key), check_name="no_near_duplicate_across_split",
                                  passed=not pairs,
                                  severity=dg.AssetCheckSeverity.ERROR, metadata=meta,
                                  description=f"{len(pairs)} near-duplicate pair(s) across the split: {text}"
                                  if pairs else "no near-duplicate pair across train and holdout")
