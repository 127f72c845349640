"""Merge cleaned drops, drop duplicates across drops, and split train/holdout by a stable hash.

Drops are merged in name order, rows in file order. Exact and near-duplicates (normalized key, then MinHash/LSH
at the configured threshold) of an earlier kept example are removed and recorded with the example they
duplicate, so each near-duplicate cluster enters the split as one example: its earliest member, the cluster's
canonical representative. That example's side is a function of its normalized key and the seed alone. Adding a
drop whose name sorts after the existing ones (the date-prefixed names do) therefore never changes which
existing example is kept or on which side it is; its near-duplicates of existing examples are removed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ft_pipeline.core.cleaning import duplicate_entry, remove_near_duplicates, repoint
from ft_pipeline.core.near_dup import NearDupParams

NO_STRATUM = "(none)"


@dataclass
class Split:
    train: list[dict] = field(default_factory=list)
    holdout: list[dict] = field(default_factory=list)
    cross_drop_duplicates: list[dict] = field(default_factory=list)
    strata: dict[str, dict] = field(default_factory=dict)  # stratum -> {train, holdout, holdout_share}


def holdout_bucket(near_key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the example and the seed alone."""
    h = hashlib.sha256(f"{seed}:{near_key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def stratum_of(rec: dict, stratify_by: str) -> str:
    """The stratum of an example: a record field (`drop`, `format`), or `answer.<key>` for a key of the JSON
    object in the last assistant message (e.g. `answer.intent` for the demo task). Missing: "(none)"."""
    if stratify_by.startswith("answer."):
        try:
            answer = json.loads(rec["messages"][-1]["content"])
        except json.JSONDecodeError:
            return NO_STRATUM
        value = answer.get(stratify_by.removeprefix("answer.")) if isinstance(answer, dict) else None
    else:
        value = rec.get(stratify_by)
    return NO_STRATUM if value is None else str(value)


def split_examples(drops: dict[str, list[dict]], holdout_fraction: float, seed: int,
                   near_dup: NearDupParams | None = None, stratify_by: str | None = None) -> Split:
    """`drops` maps drop name to its cleaned records. `near_dup` None: exact and normalized duplicates only."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
    out, seen, kept = Split(), {}, []
    for drop in sorted(drops):
        for rec in drops[drop]:
            first = seen.get(rec["near_key"])
            if first is not None:
                out.cross_drop_duplicates.append(duplicate_entry(rec, first, "near", "normalized"))
                continue
            seen[rec["near_key"]] = rec
            kept.append(rec)
    if near_dup is not None:
        kept, more = remove_near_duplicates(kept, near_dup)
        out.cross_drop_duplicates = repoint(out.cross_drop_duplicates, more) + more
    order = {d: i for i, d in enumerate(sorted(drops))}
    out.cross_drop_duplicates.sort(key=lambda d: (order[d["drop"]], d["line"]))
    counts: dict[str, Counter] = defaultdict(Counter)
    for rec in kept:
        side = "holdout" if holdout_bucket(rec["near_key"], seed) < holdout_fraction else "train"
        getattr(out, side).append(rec)
        if stratify_by:
            counts[stratum_of(rec, stratify_by)][side] += 1
    out.strata = {s: {"train": c["train"], "holdout": c["holdout"],
                      "holdout_share": round(c["holdout"] / (c["train"] + c["holdout"]), 4)}
                  for s, c in sorted(counts.items())}
    return out


def leaks(train: list[dict], holdout: list[dict], params: NearDupParams) -> list[dict]:
    """Near-duplicate pairs across the split, recomputed from the examples: (holdout example, train example,
    estimated Jaccard). Empty when the split keeps every near-duplicate cluster on one side."""
    from ft_pipeline.core import near_dup

    sig_h = near_dup.signatures((r["messages"] for r in holdout), params)
    sig_t = near_dup.signatures((r["messages"] for r in train), params)
    ref = lambda r: {k: r.get(k) for k in ("id", "drop", "line")}  # noqa: E731
    return [{"holdout": ref(holdout[i]), "train": ref(train[j]), "similarity": round(s, 4)}
            for i, j, s in near_dup.cross_pairs(sig_h, sig_t, params)]


@dataclass
class SplitOptions:
    holdout_fraction: float = 0.1
    seed: int = 0
    near_dup: NearDupParams | None = field(default_factory=NearDupParams)
    stratify_by: str | None = None
    max_tokens: int = 1024  # training's max_length
    on_too_long: str = "quarantine"  # or "fail"


def prepare_split(drops: dict[str, list[dict]], tokenizer, opts: SplitOptions):
    """Token-length policy on every cleaned example (so a too-long example never represents a cluster), then
    the split. Returns (Split, LengthResult); raises TooManyTokensError with on_too_long="fail"."""
    from ft_pipeline.core.token_policy import apply_length_policy, count_tokens

    records = [r for d in sorted(drops) for r in drops[d]]
    length = apply_length_policy(records, count_tokens([r["messages"] for r in records], tokenizer),
                                 opts.max_tokens, opts.on_too_long)
    by_drop: dict[str, list[dict]] = {d: [] for d in drops}
    for r in length.kept:
        by_drop[r["drop"]].append(r)
    split = split_examples(by_drop, opts.holdout_fraction, opts.seed, opts.near_dup, opts.stratify_by)
    return split, length


def write_split(out_dir, split: Split, length, opts: SplitOptions, drops: dict[str, str], skipped: dict) -> dict:
    """Write train, holdout, duplicates, the too-long quarantine, the token histogram and the manifest; return
    the manifest. Accounting: rows_in = train + holdout + duplicates + too_long."""
    from ft_pipeline.core.formats import sha256_file
    from ft_pipeline.core.token_policy import histogram_png, length_summary
    from ft_pipeline.jsonl import write_jsonl

    files = {"train": split.train, "holdout": split.holdout, "cross_drop_duplicates": split.cross_drop_duplicates,
             "too_long": length.too_long}
    for name, rows in files.items():
        write_jsonl(out_dir / f"{name}.jsonl", rows)
    (out_dir / "token_lengths.png").write_bytes(histogram_png(length.counts, opts.max_tokens))
    counts = {k: len(v) for k, v in files.items()}
    manifest = {"seed": opts.seed, "holdout_fraction": opts.holdout_fraction, "drops": drops, "skipped": skipped,
                "near_dup": opts.near_dup.to_json() if opts.near_dup else None,
                "max_tokens": opts.max_tokens, "on_too_long": opts.on_too_long,
                "rows_in": len(length.counts), **counts,
                "rows_accounted_for": len(length.counts) == sum(counts.values()),
                "token_lengths": length_summary(length.counts),
                "stratify_by": opts.stratify_by, "strata": split.strata,
                "train_sha256": sha256_file(out_dir / "train.jsonl"),
                "holdout_sha256": sha256_file(out_dir / "holdout.jsonl")}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
