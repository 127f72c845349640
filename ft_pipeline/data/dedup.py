"""What a removed duplicate records, and the label conflicts of one drop settled after its exact and normalized
dedup (data/conflicts.py says what each `conflicts` value does), before its MinHash pass."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ft_pipeline.data import conflicts


def duplicate_entry(rec: dict, first: dict, kind: str, method: str, similarity: float = 1.0) -> dict:
    """What a removed duplicate records: itself, how it was matched, and the kept example it duplicates."""
    return {"drop": rec["drop"], "line": rec["line"], "raw_sha256": rec.get("raw_sha256"), "kind": kind,
            "method": method, "similarity": round(float(similarity), 4), "id": rec["id"],
            "duplicate_of": {k: first[k] for k in ("id", "drop", "line")}}


def replaced_entry(rec: dict, kept: dict) -> dict:
    """A row of a label conflict that `latest` replaced, recorded with the duplicates (rows still reconcile)."""
    return {**duplicate_entry(rec, kept, conflicts.REPLACED, "latest"),
            "reason": conflicts.replaced_reason(kept, rec["drop"])}


def repoint(duplicates: list[dict], removed: list[dict]) -> list[dict]:
    """Duplicates that pointed at an example the MinHash pass then removed point at the example that one
    duplicates instead, so `duplicate_of` always names a kept example."""
    to = {d["id"]: d["duplicate_of"] for d in removed}
    return [{**d, "duplicate_of": to[d["duplicate_of"]["id"]]} if d["duplicate_of"]["id"] in to else d
            for d in duplicates]


@dataclass
class Settled:
    """The conflicts of a drop, settled: `alive` (per candidate: still kept), `duplicates` (the entries, with
    the replaced rows and without the quarantined ones), `quarantine` ([(row, rows whose answer differs)], the
    raw text to be added), `groups` ([(row, candidate holding its answer, outcome)] per conflict, in line order)."""

    alive: np.ndarray
    duplicates: list[dict]
    quarantine: list[tuple[dict, list[dict]]] = field(default_factory=list)
    groups: list[list[tuple[dict, int, str]]] = field(default_factory=list)


def settle(how: str, ref, input_keys: np.ndarray, answer_keys: np.ndarray, duplicates: list[dict],
           dup_of: list[int]) -> Settled:
    """The candidates of a drop (rows no earlier row has the normalized input and answer of; `ref(i)` is the
    i-th as a dict with id, drop, line and raw_sha256) with their input and answer keys, `duplicates` its exact
    and normalized duplicates so far and `dup_of` the candidate each duplicates. A conflict is the candidates
    of one input key, with the copies of each; `how` is the `conflicts` knob."""
    found = conflicts.groups(input_keys, answer_keys)
    out = Settled(np.ones(len(input_keys), dtype=bool), duplicates)
    if not found:
        return out
    group_of = np.full(len(input_keys), -1, dtype=np.int64)
    for g, members in enumerate(found):
        group_of[members] = g
    copies: list[list[int]] = [[] for _ in found]
    for j in np.flatnonzero(group_of[np.asarray(dup_of, dtype=np.int64)] >= 0).tolist() if dup_of else ():
        copies[group_of[dup_of[j]]].append(j)
    last = np.zeros(len(input_keys), dtype=np.int64)  # per member: the line of its last copy (`latest`)
    gone, duplicates = set(), list(duplicates)
    for members, cps in zip(found, copies):
        refs = {m: ref(m) for m in members.tolist()}
        rows = sorted([(r, m, True) for m, r in refs.items()] + [(duplicates[j], dup_of[j], False) for j in cps],
                      key=lambda r: r[0]["line"])
        replaced: set[int] = set()
        if how == "quarantine":
            out.alive[members] = False
            gone.update(cps)
            out.quarantine += [(row, [r for r, n, _ in rows if answer_keys[n] != answer_keys[m]])
                               for row, m, _ in rows]
        elif how == "latest":
            for row, m, _ in rows:
                last[m] = max(last[m], row["line"])
            kept, losers = conflicts.latest(members, answer_keys, last)
            replaced = set(losers.tolist())
            out.alive[losers] = False
            duplicates += [replaced_entry(refs[m], refs[kept]) for m in sorted(replaced)]
            for j in cps:
                if dup_of[j] in replaced:
                    duplicates[j] = replaced_entry(duplicates[j], refs[kept])
        out.groups.append([(row, m, "quarantined" if how == "quarantine" else "replaced" if m in replaced
                            else "kept" if own else "duplicate") for row, m, own in rows])
    out.duplicates = [d for j, d in enumerate(duplicates) if j not in gone]
    return out
