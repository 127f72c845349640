"""Preference-pair drops to train and holdout pairs. Each file of the preference folder is a drop read by
data/formats.py's readers; every row becomes a canonical pair or a quarantined record with its reason, pairs
are whitespace-normalized and PII-redacted like SFT rows, deduplicated across drops on (prompt, chosen,
rejected), and split by a stable hash of the prompt alone, so a prompt never has pairs on both sides. With
`holdout_drops` (a fine-tuning job's validation file) those drops' pairs are the holdout and every other drop's
train; a holdout pair whose prompt has a train pair is removed as a duplicate (kind `prompt`), so no prompt is on
both sides then either. A pair written from a stored completion (reviewed traffic, traffic/reviewed.py) keeps its
`completion_id` and `answered_by` (NAME/VERSION) as an SFT row does, into the DPO version's lineage.

Accounting is exact: for every drop, rows in = kept + quarantined + duplicates + erased (rows an erasure request
names, erasure/requests.py: kept as their provenance and request id, without their text)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ft_pipeline.data.cleaning import (
    SERVED,
    duplicate_entry,
    example_id,
    iter_canonical,
    near_dup_key,
    normalize_many,
    redact_many,
)
from ft_pipeline.data.drop_files import find_drops
from ft_pipeline.data.errors import DropError
from ft_pipeline.data.formats import ParsedDrop, read_drop, sha256_file
from ft_pipeline.data.splitting import holdout_bucket
from ft_pipeline.jsonl import write_jsonl
from ft_pipeline.preference.pair_formats import SIDES, detect_format, to_pair

PROVENANCE = ("drop", "line", "format", "raw_sha256")


def canonical_pairs(parsed: ParsedDrop, fmt: str) -> list[dict]:
    """One record per row: provenance and original text (`raw`), and either `prompt`/`chosen`/`rejected` or
    the reason (`code`, `reason`) it could not be converted."""
    return list(iter_canonical(parsed, fmt, to_pair))


def pair_id(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> str:
    """Stable id of a normalized pair: `example_id` of the prompt followed by the two answers under role names
    no chat message has, so a pair's id is never an SFT example's."""
    return example_id(prompt + [{"role": "chosen", "content": chosen[0]["content"]},
                                {"role": "rejected", "content": rejected[0]["content"]}])


def clean_pairs(records: list[dict], redact_pii: bool = True) -> list[dict]:
    """Normalize and redact every message of the converted records (in place, a few passes over all texts)
    and quarantine pairs whose answers are then the same. Returns the records, each with a `pair_id` or a
    `code`/`reason`."""
    usable = [r for r in records if "code" not in r]
    texts = normalize_many([m["content"] for r in usable for k in ("prompt", *SIDES) for m in r[k]])
    texts = iter(redact_many(texts, Counter()) if redact_pii else texts)
    for r in usable:
        for k in ("prompt", *SIDES):
            r[k] = [{"role": m["role"], "content": next(texts)} for m in r[k]]
        if r["chosen"][0]["content"] == r["rejected"][0]["content"]:
            r.update(code="chosen_equals_rejected", reason="'chosen' and 'rejected' are the same answer (after "
                     "whitespace normalization and redaction): the pair teaches no preference")
        else:
            r["pair_id"] = pair_id(r["prompt"], r["chosen"], r["rejected"])
    return records


def is_holdout(prompt: list[dict], holdout_fraction: float, seed: int) -> bool:
    """The side of every pair with this prompt: a function of the normalized prompt and the seed alone."""
    return holdout_bucket(near_dup_key(prompt), seed) < holdout_fraction


def lineage_rows(pairs: list[dict], folder: str) -> list[dict]:
    """Train pairs as rows of a version's lineage (registry `log_lineage`): `id` is the pair id and `drop` is
    named under the raw folder's `folder`, as erasure names a preference drop; `completion_id` and
    `answered_by` stay on a pair made from a stored completion."""
    return [{**p, "id": p["pair_id"], "drop": f"{folder}/{p['drop']}"} for p in pairs]


def build_pairs(pref_dir: Path, out_dir: Path, *, holdout_fraction: float = 0.1, seed: int = 0,
                redact_pii: bool = True, encoding: str = "utf-8", erased: dict[str, str] | None = None,
                holdout_drops=()) -> dict:
    """Read every preference drop directly in `pref_dir`, write train.jsonl, holdout.jsonl, quarantine.jsonl,
    duplicates.jsonl, erased.jsonl and manifest.json to `out_dir`, and return the manifest. `erased` is
    {raw_sha256: erasure request id}: those rows, and lines `forget --redact-source` rewrote, are counted as
    erased. No drops (or no folder): all counts zero. A file that is no preference drop, or a `holdout_drops` name
    (a partition key) that is no drop, raises DropError naming it."""
    from ft_pipeline.data.erased import mark_erased
    from ft_pipeline.data.splitting import HoldoutDropsError, merge_order

    drops, problems = find_drops(pref_dir)
    try:  # the holdout drops last: their pairs are checked against every train prompt
        drops = {k: drops[k] for k in merge_order(drops, holdout_drops)}
    except HoldoutDropsError as e:
        problems.append(f"{pref_dir}: {e}")
    if problems:
        raise DropError("; ".join(problems))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sides: dict[str, list[dict]] = {"train": [], "holdout": []}
    quarantine, duplicates, gone, meta = [], [], [], {}
    seen: dict[str, dict] = {}  # pair_id -> the kept pair's reference
    train_prompts: dict[str, dict] = {}  # with holdout_drops: a train prompt's key -> its first pair's reference
    for key, path in drops.items():
        parsed = read_drop(path, encoding)
        fmt = detect_format(parsed.rows, path)
        counts = Counter()
        records = []
        for r in mark_erased(canonical_pairs(parsed, fmt), erased or {}):
            if "erased" in r:
                gone.append(r)
                counts["erased"] += 1
            else:
                records.append(r)
        for r in clean_pairs(records, redact_pii):
            base = {k: r[k] for k in PROVENANCE}
            if "code" in r:
                quarantine.append({**base, "raw": r["raw"], "code": r["code"], "reason": r["reason"]})
                counts["quarantined"] += 1
            elif (first := seen.get(r["pair_id"])) is not None:
                duplicates.append(duplicate_entry({**r, "id": r["pair_id"]}, first, "exact", "normalized"))
                counts["duplicates"] += 1
            elif holdout_drops and key in holdout_drops and (first := train_prompts.get(near_dup_key(r["prompt"]))):
                duplicates.append(duplicate_entry({**r, "id": r["pair_id"]}, first, "prompt", "in_train"))
                counts["duplicates"] += 1
            else:
                ref = seen[r["pair_id"]] = {"id": r["pair_id"], "drop": r["drop"], "line": r["line"]}
                kept = {**base, "pair_id": r["pair_id"], **{k: r[k] for k in SERVED if k in r},
                        **{k: r[k] for k in ("prompt", *SIDES)}}
                held = key in holdout_drops if holdout_drops else is_holdout(r["prompt"], holdout_fraction, seed)
                if holdout_drops and not held:
                    train_prompts.setdefault(near_dup_key(r["prompt"]), ref)
                sides["holdout" if held else "train"].append(kept)
                counts["kept"] += 1
        meta[path.name] = {"sha256": parsed.sha256, "format": fmt, "rows_in": len(parsed.rows),
                           **{k: counts[k] for k in ("kept", "quarantined", "duplicates", "erased")}}
        if sum(counts.values()) != len(parsed.rows):
            raise RuntimeError(f"{path}: {len(parsed.rows)} rows in but {dict(counts)} out: rows were lost")
    for name, records in (*sides.items(), ("quarantine", quarantine), ("duplicates", duplicates), ("erased", gone)):
        write_jsonl(out_dir / f"{name}.jsonl", records)
    manifest = {"drops": meta, "train": len(sides["train"]), "holdout": len(sides["holdout"]),
                "holdout_drops": list(holdout_drops),
                "train_sha256": sha256_file(out_dir / "train.jsonl"),
                "holdout_sha256": sha256_file(out_dir / "holdout.jsonl"),
                "quarantine_by_reason": dict(sorted(Counter(q["code"] for q in quarantine).items()))}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
