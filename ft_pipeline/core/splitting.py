"""Merge cleaned drops, drop duplicates across drops, and split train/holdout by a stable hash.

Membership depends only on the example's near-duplicate key and the seed, so adding a drop never moves an
existing example, and near-duplicates always land on the same side."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class Split:
    train: list[dict] = field(default_factory=list)
    holdout: list[dict] = field(default_factory=list)
    cross_drop_duplicates: list[dict] = field(default_factory=list)


def holdout_bucket(near_key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the example and the seed alone."""
    h = hashlib.sha256(f"{seed}:{near_key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_examples(drops: dict[str, list[dict]], holdout_fraction: float, seed: int) -> Split:
    """`drops` maps drop name to its cleaned records; drops are merged in name order, lines in file order."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be between 0 and 1, got {holdout_fraction}")
    out, seen = Split(), {}
    for drop in sorted(drops):
        for rec in drops[drop]:
            first = seen.get(rec["near_key"])
            if first is not None:
                out.cross_drop_duplicates.append({"drop": rec["drop"], "line": rec["line"], "id": rec["id"],
                                                  "duplicate_of": {k: first[k] for k in ("id", "drop", "line")}})
                continue
            seen[rec["near_key"]] = rec
            side = out.holdout if holdout_bucket(rec["near_key"], seed) < holdout_fraction else out.train
            side.append(rec)
    return out
