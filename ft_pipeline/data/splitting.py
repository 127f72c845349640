"""Merge cleaned drops, drop duplicates across drops, and split train/holdout by a stable hash.

Drops are merged in name order, rows in file order. Exact and near-duplicates (normalized key, then MinHash/LSH
of the input at the configured threshold) of an earlier kept example with the same answer are removed and
recorded with the example they duplicate, so each near-duplicate cluster enters the split as one example: its
earliest member, the cluster's canonical representative. That example's side is a function of its normalized
key and the seed alone. Adding a drop whose name sorts after the existing ones (the date-prefixed names do)
therefore never changes which existing example is kept or on which side it is; its near-duplicates of existing
examples are removed. A row whose answer differs is never a duplicate: one input with different answers is a
label conflict, kept, quarantined or settled for the latest drop as the `conflicts` knob says
(data/conflicts.py; with `latest` a new drop does replace an existing example, which is what it is for).

With `holdout_drops` (drops named by partition key, e.g. a fine-tuning job's validation file) the hash does not
deal: the rows of those drops are the holdout and every other drop's rows are train. Those drops are merged after
the others, so a holdout row that duplicates (exactly or near) a training row is the one removed: nothing leaks."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ft_pipeline import knobs
from ft_pipeline.data import conflicts
from ft_pipeline.data.bulk import no_cycle_gc
from ft_pipeline.data.dedup import duplicate_entry
from ft_pipeline.data.formats import FORMATS
from ft_pipeline.data.keys import as_uint64, side_keys
from ft_pipeline.data.near_dup import NearDupParams
from ft_pipeline.data.output_schema import check_output_schema, write_output_schema
from ft_pipeline.data.token_policy import ON_TOO_LONG
from ft_pipeline.jsonl import line, loads, write_jsonl
from ft_pipeline.structured.schema import SchemaCollector

NO_STRATUM = "(none)"


# The allowed values of the data knobs of cleaning and splitting (knobs.py).
KNOBS = {
    "format": knobs.Knob(choices=("auto", *FORMATS)), "near_dup_threshold": knobs.Knob(gt=0, le=1),
    "near_dup_num_perm": knobs.Knob(ge=2),
    "near_dup_ngram": knobs.POSITIVE, "max_chars": knobs.POSITIVE, "holdout_fraction": knobs.Knob(gt=0, lt=1),
    "seed": knobs.NON_NEGATIVE,
    "max_tokens": knobs.POSITIVE, "on_too_long": knobs.Knob(choices=ON_TOO_LONG),
    "conflicts": knobs.Knob(choices=conflicts.CONFLICTS),
}


@dataclass
class Split:
    train: list[dict] = field(default_factory=list)
    holdout: list[dict] = field(default_factory=list)
    cross_drop_duplicates: list[dict] = field(default_factory=list)
    strata: dict[str, dict] = field(default_factory=dict)  # stratum -> {train, holdout, holdout_share}
    quarantined: list[dict] = field(default_factory=list)  # rows of label conflicts, with conflicts=quarantine
    conflicts: list[dict] = field(default_factory=list)  # label conflicts: each row with its answer and outcome


@dataclass
class SplitOptions:
    holdout_fraction: float = 0.1
    seed: int = 0
    near_dup: NearDupParams | None = field(default_factory=NearDupParams)
    stratify_by: str | None = None
    max_tokens: int = 1024  # training's max_length
    on_too_long: str = "quarantine"  # or "fail"
    conflicts: str = "keep"  # rows with one input and different answers: keep, quarantine or latest
    output_schema: str = "auto"  # auto (inferred when every train answer is a JSON object), off, or a schema file
    holdout_drops: tuple[str, ...] | list[str] = ()  # drops whose rows are the holdout (empty: the hash deals)


class HoldoutDropsError(ValueError):
    """`holdout_drops` names a drop that is not among the drops being split."""


def merge_order(names, holdout_drops=()) -> list[str]:
    """The drops in the order the split merges them: by name, the `holdout_drops` after every other drop (so a
    duplicate across the two sides leaves the holdout); HoldoutDropsError for a name that is none of `names`."""
    names = sorted(names)
    if unknown := sorted(set(holdout_drops) - set(names)):
        raise HoldoutDropsError(f"holdout_drops names {', '.join(map(repr, unknown))}, which "
                                f"{'is' if len(unknown) == 1 else 'are'} not among the drops being split "
                                f"({', '.join(names) or 'none'})")
    return sorted(names, key=lambda n: n in holdout_drops)


def holdout_bucket(near_key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the example and the seed alone."""
    h = hashlib.sha256(f"{seed}:{near_key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def holdout_buckets(near_keys: list[str], seed: int) -> np.ndarray:
    """`holdout_bucket` of each key, as a float64 array (the same numbers: the top 8 bytes of the digest as an
    unsigned integer, converted with rounding to nearest, over 2^64, which is exact)."""
    sha = hashlib.sha256
    top = b"".join([sha(f"{seed}:{k}".encode()).digest()[:8] for k in near_keys])
    return np.frombuffer(top, dtype=">u8").astype(np.float64) / 2.0**64


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


@dataclass
class Assignment:
    """What the split decided for each example (row i of the merged input): `side` 0 train, 1 holdout,
    DUPLICATE, TOO_LONG or CONFLICT (quarantined); for a duplicate, `dup_of` (the kept example's row), `method`
    and `similarity`; `conflicts`, the rows of each label conflict."""

    side: np.ndarray
    dup_of: np.ndarray
    method: list[str | None]
    similarity: np.ndarray
    conflicts: list[np.ndarray] = field(default_factory=list)


DUPLICATE, TOO_LONG, CONFLICT = -1, -2, -3


def assign(near_keys: list[str], sig, opts: "SplitOptions", too_long=None, *, input_keys: np.ndarray,
           answer_keys: np.ndarray, in_holdout_drop: np.ndarray | None = None) -> Assignment:
    """The split's decisions for examples in merge order (drops by name, rows in file order): too-long rows
    out; label conflicts (one input key, different answer keys) as `opts.conflicts` says; a normalized copy
    (normalized key and answer key) of an earlier kept row out; then a MinHash near-duplicate of the input of
    an earlier kept row with the same answer out (`sig`: the inputs' signatures, or a function of the
    surviving rows' indices returning them); the rest dealt by `holdout_bucket` of the normalized key, or with
    `opts.holdout_drops` by `in_holdout_drop` (True for the rows of those drops, merged last). A duplicate always
    points at a kept row, with its answer (or, `conflict_replaced`, the latest answer)."""
    if opts.holdout_drops and in_holdout_drop is None:
        raise ValueError("holdout_drops is set: assign needs in_holdout_drop, the rows of those drops")
    if not 0 < opts.holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {opts.holdout_fraction}")
    if opts.conflicts not in conflicts.CONFLICTS:
        raise ValueError(f"conflicts must be one of {', '.join(conflicts.CONFLICTS)}, got {opts.conflicts!r}")
    from ft_pipeline.data import lsh

    n = len(near_keys)
    side = np.zeros(n, dtype=np.int8)
    dup_of = np.full(n, -1, dtype=np.int64)
    similarity = np.ones(n, dtype=np.float32)
    method: list[str | None] = [None] * n
    if too_long is not None:
        side[too_long] = TOO_LONG
    eligible = np.flatnonzero(side != TOO_LONG)
    found = [eligible[g] for g in conflicts.groups(input_keys[eligible], answer_keys[eligible])]
    for group in found:
        if opts.conflicts == "quarantine":
            side[group] = CONFLICT
        elif opts.conflicts == "latest":
            kept, replaced = conflicts.latest(group, answer_keys)  # the last row is the newest drop's
            side[replaced], dup_of[replaced] = DUPLICATE, kept
            for i in replaced.tolist():
                method[i] = conflicts.REPLACED
    eligible = np.flatnonzero(side == 0)
    # A normalized copy: the same normalized key and the same answer key as an earlier row.
    answer_codes = pd.factorize(answer_keys[eligible])[0]
    near_codes = pd.factorize(pd.Series(near_keys, dtype=object).iloc[eligible])[0]
    codes = pd.factorize(near_codes * (int(answer_codes.max(initial=0)) + 1) + answer_codes)[0]
    _, first = np.unique(codes, return_index=True)  # each key's first eligible row
    first_row = eligible[first[codes]]
    repeat = first_row != eligible
    side[eligible[repeat]], dup_of[eligible[repeat]] = DUPLICATE, first_row[repeat]
    for i in eligible[repeat].tolist():
        method[i] = "normalized"
    rows = np.flatnonzero(side == 0)
    if opts.near_dup is not None and rows.size:
        sub = sig(rows) if callable(sig) else sig[rows]
        d, sim = lsh.dedup(sub, opts.near_dup, groups=answer_keys[rows])
        for k in np.flatnonzero(d >= 0).tolist():
            i = int(rows[k])
            side[i], dup_of[i], method[i], similarity[i] = DUPLICATE, rows[d[k]], "minhash", sim[k]
    for i in np.flatnonzero((side == DUPLICATE) & (dup_of >= 0)).tolist():
        while side[dup_of[i]] == DUPLICATE:  # its target was removed after it: point at what that one kept
            dup_of[i] = dup_of[dup_of[i]]
    dealt = np.flatnonzero(side == 0)
    if opts.holdout_drops:
        side[dealt] = np.asarray(in_holdout_drop, dtype=bool)[dealt]
    else:
        side[dealt] = holdout_buckets([near_keys[i] for i in dealt.tolist()], opts.seed) < opts.holdout_fraction
    return Assignment(side, dup_of, method, similarity, found)


def _strata(values: list[str], side: np.ndarray) -> dict[str, dict]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for v, s in zip(values, side.tolist()):
        if s >= 0:
            counts[v]["holdout" if s else "train"] += 1
    return {v: {"train": c["train"], "holdout": c["holdout"],
                "holdout_share": round(c["holdout"] / (c["train"] + c["holdout"]), 4)}
            for v, c in sorted(counts.items())}


def _dup_entry(rec: dict, a: Assignment, i: int, ref: dict) -> dict:
    if a.method[i] == conflicts.REPLACED:
        return {**duplicate_entry(rec, ref, conflicts.REPLACED, "latest"),
                "reason": conflicts.replaced_reason(ref, rec["drop"])}
    return duplicate_entry(rec, ref, "near", a.method[i], float(a.similarity[i]))


def side_keys_of(records) -> tuple[list[str], list[str]]:
    """The input and answer keys of cleaned records: cleaning's, or computed for a file cleaned before it wrote
    them."""
    keys = [(r["input_key"], r["answer_key"]) if "answer_key" in r else side_keys(r["messages"]) for r in records]
    return [k[0] for k in keys], [k[1] for k in keys]


def _conflict_outputs(a: Assignment, answer_keys: np.ndarray, rec) -> tuple[list[dict], dict[int, dict]]:
    """The reports of the label conflicts, and the quarantine entry of each row quarantined for one, by row
    (`rec(i)`: the cleaned record of row i)."""
    reports, quarantined = [], {}
    for group in a.conflicts:
        rows = {i: rec(i) for i in group.tolist()}
        outcome = {i: "kept" if a.side[i] >= 0 else "quarantined" if a.side[i] == CONFLICT else
                   "replaced" if a.method[i] == conflicts.REPLACED else "duplicate" for i in rows}
        reports.append(conflicts.report(list(rows.values()), list(outcome.values()),
                                        [conflicts.answer(r["messages"]) for r in rows.values()],
                                        conflicts.input_text(rows[int(group[0])]["messages"])))
        for i, r in rows.items():
            if a.side[i] == CONFLICT:
                others = [o for j, o in rows.items() if answer_keys[j] != answer_keys[i]]
                quarantined[i] = conflicts.quarantine_entry(r, others, id=r["id"], messages=r["messages"])
    return reports, quarantined


def split_examples(drops: dict[str, list[dict]], holdout_fraction: float, seed: int,
                   near_dup: NearDupParams | None = None, stratify_by: str | None = None,
                   signatures: dict | None = None, conflicts: str = "keep", holdout_drops=()) -> Split:
    """`drops` maps drop name to its cleaned records. `near_dup` None: exact and normalized duplicates only.
    `signatures`: drop -> MinHash signatures of its records' inputs computed with `near_dup` (cleaning's),
    reused. `conflicts`: keep, quarantine or latest (data/conflicts.py). `holdout_drops`: the drops whose rows
    are the holdout (SplitOptions)."""
    from ft_pipeline.data import near_dup as nd

    order = merge_order(drops, holdout_drops)
    records = [r for d in order for r in drops[d]]
    opts = SplitOptions(holdout_fraction, seed, near_dup, stratify_by, conflicts=conflicts,
                        holdout_drops=tuple(holdout_drops))
    held = np.array([d in opts.holdout_drops for d in order for _ in drops[d]], dtype=bool)
    if signatures and all(d in signatures and len(signatures[d]) == len(drops[d]) for d in drops):
        sig = np.concatenate([signatures[d] for d in order]) if records else None
    else:
        sig = lambda rows: nd.signatures((nd.input_side(records[i]["messages"]) for i in rows), near_dup)  # noqa: E731
    inputs, answers = (as_uint64(k) for k in side_keys_of(records))
    a = assign([r["near_key"] for r in records], sig, opts, input_keys=inputs, answer_keys=answers,
               in_holdout_drop=held)
    out = Split()
    out.conflicts, quarantined = _conflict_outputs(a, answers, records.__getitem__)
    for i, r in enumerate(records):
        if a.side[i] == DUPLICATE:
            out.cross_drop_duplicates.append(_dup_entry(r, a, i, records[a.dup_of[i]]))
        elif a.side[i] == CONFLICT:
            out.quarantined.append(quarantined[i])
        else:
            (out.holdout if a.side[i] else out.train).append(r)
    if stratify_by:
        out.strata = _strata([stratum_of(r, stratify_by) for r in records], a.side)
    return out


def leaks(train: list[dict], holdout: list[dict], params: NearDupParams) -> list[dict]:
    """Near-duplicate pairs across the split, recomputed from the examples: (holdout example, train example,
    estimated Jaccard of their inputs), pairs with the same answer only. Empty when the split keeps every
    near-duplicate cluster on one side."""
    from ft_pipeline.data import lsh, near_dup

    def signed(rows):
        return (near_dup.signatures((near_dup.input_side(r["messages"]) for r in rows), params),
                as_uint64(side_keys_of(rows)[1]))

    (sig_h, ans_h), (sig_t, ans_t) = signed(holdout), signed(train)
    ref = lambda r: {k: r.get(k) for k in ("id", "drop", "line")}  # noqa: E731
    return [{"holdout": ref(holdout[i]), "train": ref(train[j]), "similarity": round(s, 4)}
            for i, j, s in lsh.cross_pairs(sig_h, sig_t, params, ans_h, ans_t)]


@no_cycle_gc()
def split_files(cleaned: dict[str, Path], out_dir: Path, opts: SplitOptions, tokenizer=None,
                signatures: dict | None = None, drops_meta: dict | None = None, skipped: dict | None = None,
                drop_files: dict | None = None) -> dict:
    """The split of cleaned JSONL drops, streamed: one pass keeps a few small fields a row (normalized, input
    and answer keys, id, line, token count, stratum) and the MinHash signatures of the inputs
    (`signatures[drop]`, cleaning's, reused when given), a second pass copies each kept line to train or
    holdout and writes the duplicates, the too-long quarantine and the label conflicts (conflicts.jsonl, and
    with conflicts=quarantine their rows). Token lengths use `tokenizer` (None: not measured). `drop_files`:
    drop -> the raw file's name, recorded in the manifest for lineage. Drops are merged in `merge_order` (the
    `opts.holdout_drops` last). Returns the manifest.
    Accounting: rows_in = train + holdout + duplicates + too_long + quarantined_conflicts."""
    from ft_pipeline.data import near_dup as nd
    from ft_pipeline.data.formats import sha256_file
    from ft_pipeline.data.token_policy import count_tokens, histogram_png, length_summary, too_long, too_long_entry

    given = check_output_schema(opts.output_schema)  # a bad schema file fails here, before any work
    names = merge_order(cleaned, opts.holdout_drops)
    keys, ids, lines, row_drop, strata, tokens, sigs, inputs, answers = [], [], [], [], [], [], [], [], []
    for di, name in enumerate(names):
        batch, start = [], len(keys)
        with open(cleaned[name], "rb") as f:
            for text in f:
                rec = loads(text)
                keys.append(rec["near_key"])
                ik, ak = (rec["input_key"], rec["answer_key"]) if "answer_key" in rec else side_keys(rec["messages"])
                inputs.append(ik)
                answers.append(ak)
                ids.append(rec["id"])
                lines.append(rec["line"])
                row_drop.append(di)
                if opts.stratify_by:
                    strata.append(stratum_of(rec, opts.stratify_by))
                batch.append(rec["messages"])
                if len(batch) >= 2048:
                    tokens.append(count_tokens(batch, tokenizer) if tokenizer else np.zeros(len(batch), np.int64))
                    if opts.near_dup and (signatures or {}).get(name) is None:
                        sigs.append(nd.signatures(map(nd.input_side, batch), opts.near_dup))
                    batch = []
        if batch:
            tokens.append(count_tokens(batch, tokenizer) if tokenizer else np.zeros(len(batch), np.int64))
        sig = (signatures or {}).get(name)
        if opts.near_dup and sig is not None and len(sig) == len(keys) - start:
            sigs.append(sig)
        elif opts.near_dup:
            if sig is not None:
                raise ValueError(f"{name}: {len(sig)} signatures for {len(keys) - start} rows")
            if batch:
                sigs.append(nd.signatures(map(nd.input_side, batch), opts.near_dup))
    counts = np.concatenate(tokens) if tokens else np.zeros(0, np.int64)
    over = (too_long(counts, opts.max_tokens, opts.on_too_long, lambda i: f"{names[row_drop[i]]} line {lines[i]}")
            if tokenizer else np.zeros(len(keys), dtype=bool))
    all_sig = np.concatenate(sigs) if sigs else None
    answers = as_uint64(answers)
    held = np.isin(np.asarray(row_drop, dtype=np.int64), [names.index(d) for d in opts.holdout_drops])
    a = assign(keys, all_sig, opts, over, input_keys=as_uint64(inputs), answer_keys=answers, in_holdout_drop=held)
    del inputs
    ref = lambda j: {"id": ids[j], "drop": names[row_drop[j]], "line": lines[j]}  # noqa: E731
    outs = {n: open(out_dir / f"{n}.jsonl.tmp", "wb")
            for n in ("train", "holdout", "cross_drop_duplicates", "too_long", "quarantined_conflicts")}
    sides = a.side.tolist()
    in_conflict, conflict_recs = {i for g in a.conflicts for i in g.tolist()}, {}
    collect = SchemaCollector() if opts.output_schema == "auto" else None
    try:
        i = 0
        for name in names:
            with open(cleaned[name], "rb") as f:
                for text in f:  # the kept lines are copied as they are, bytes for bytes
                    s = sides[i]
                    if s >= 0:
                        outs["holdout" if s else "train"].write(text)
                        if not s and collect is not None and collect.why is None:
                            collect.add_messages(loads(text)["messages"], f"{name} line {lines[i]}")
                    elif s == DUPLICATE:
                        outs["cross_drop_duplicates"].write(line(_dup_entry(loads(text), a, i, ref(a.dup_of[i]))))
                    elif s == TOO_LONG:
                        outs["too_long"].write(line(too_long_entry(loads(text), int(counts[i]), opts.max_tokens)))
                    if i in in_conflict:
                        conflict_recs[i] = loads(text)
                    i += 1
        reports, quarantined = _conflict_outputs(a, answers, conflict_recs.__getitem__)
        outs["quarantined_conflicts"].writelines(line(quarantined[j]) for j in sorted(quarantined))
    finally:
        for f in outs.values():
            f.close()
    per_drop = np.zeros((len(names), 5), dtype=np.int64)  # rows of each drop: train, holdout, dup, too long, conflict
    np.add.at(per_drop, (np.asarray(row_drop, dtype=np.int64),
                         np.select([a.side >= 0, a.side == DUPLICATE, a.side == TOO_LONG], [a.side, 2, 3], 4)), 1)
    n_out = dict(zip(outs, per_drop.sum(axis=0).tolist()))
    by_drop = {side: {name: c for name, c in zip(names, per_drop[:, k].tolist()) if c}
               for k, side in enumerate(("train", "holdout"))}
    for n in outs:
        (out_dir / f"{n}.jsonl.tmp").replace(out_dir / f"{n}.jsonl")
    write_jsonl(out_dir / "conflicts.jsonl", reports)
    schema_info = write_output_schema(out_dir, opts.output_schema, collect, given)
    (out_dir / "token_lengths.png").write_bytes(histogram_png(counts, opts.max_tokens))
    manifest = {"seed": opts.seed, "holdout_fraction": None if opts.holdout_drops else opts.holdout_fraction,
                "holdout_drops": list(opts.holdout_drops), "drops": drops_meta or {},
                "drop_files": drop_files or {},
                "skipped": skipped or {}, "near_dup": opts.near_dup.to_json() if opts.near_dup else None,
                "max_tokens": opts.max_tokens, "on_too_long": opts.on_too_long, "conflict_policy": opts.conflicts,
                "conflicts": len(reports), "conflict_rows": sum(len(c["rows"]) for c in reports), "rows_in": len(keys),
                **{n: n_out[n] for n in outs}, "rows_accounted_for": i == len(keys) == sum(n_out.values()),
                "by_drop": by_drop,
                "token_lengths": length_summary(counts) if tokenizer else {"examples": 0},
                "stratify_by": opts.stratify_by,
                "strata": _strata(strata, a.side) if opts.stratify_by else {},
                "train_sha256": sha256_file(out_dir / "train.jsonl"),
                "holdout_sha256": sha256_file(out_dir / "holdout.jsonl"), "output_schema": schema_info}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
