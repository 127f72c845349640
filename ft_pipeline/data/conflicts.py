"""Label conflicts: rows with the same input (system and user messages, case, punctuation and whitespace aside)
and different answers. They are not duplicates (a duplicate has the answer of the row it duplicates); the
`conflicts` knob of cleaning and of the split says what becomes of them:

- keep (default): every row stays; the conflict is reported (asset metadata, the terminal, a warning check);
- quarantine: every row of the input goes to the quarantine, its reason naming the rows it conflicts with;
- latest: the answer of the row seen last (the newest drop; within a drop, the last line) wins. The row kept is
  the first with that answer, as dedup keeps the earliest of equal rows; each row with another answer is recorded
  with the duplicates as `conflict_replaced`, pointing at the row kept, so that rows still reconcile.

Either way each row lands in exactly one of kept, quarantined and duplicates."""

from __future__ import annotations

import numpy as np

CONFLICTS = ("keep", "quarantine", "latest")
CODE = "label_conflict"
REPLACED = "conflict_replaced"


def groups(input_keys: np.ndarray, answer_keys: np.ndarray) -> list[np.ndarray]:
    """The positions of each input key that has more than one answer key: ascending arrays, ordered by their
    first position. Array passes (a sort), so that the common case, no conflict, costs little."""
    if len(input_keys) < 2:
        return []
    order = np.lexsort((answer_keys, input_keys))
    ik, ak = input_keys[order], answer_keys[order]
    same_input = ik[1:] == ik[:-1]
    run = np.concatenate(([0], np.cumsum(~same_input)))  # the input key's number, in sorted order
    torn = np.zeros(run[-1] + 1, dtype=bool)
    torn[run[1:][same_input & (ak[1:] != ak[:-1])]] = True
    pos, run = order[torn[run]], run[torn[run]]
    if not len(pos):
        return []
    return sorted((np.sort(g) for g in np.split(pos, np.flatnonzero(np.diff(run)) + 1)), key=lambda g: g[0])


def latest(group: np.ndarray, answer_keys: np.ndarray, last: np.ndarray | None = None) -> tuple[int, np.ndarray]:
    """(the row kept, the rows replaced) of one conflict group under `latest`: the answer of the member seen
    last (greatest `last`; None: the position itself) wins, the first member with it is kept, the members with
    another answer are replaced."""
    when = group if last is None else last[group]
    wins = answer_keys[group] == answer_keys[group[int(np.argmax(when))]]
    return int(group[wins][0]), group[~wins]


def where(rows: list[dict], drop: str | None = None) -> str:
    """"drop line 3, line 9 and 1 more": the rows, the drop left out where it is `drop`."""
    named = [f"line {r['line']}" if r["drop"] == drop else f"{r['drop']} line {r['line']}" for r in rows[:5]]
    return ", ".join(named) + (f" and {len(rows) - 5} more" if len(rows) > 5 else "")


def quarantine_entry(row: dict, others: list[dict], **text) -> dict:
    """The quarantine entry of a row of a conflict: where it came from, the rows whose answer differs, and its
    text (`raw`, the row as the drop has it; the split, which reads cleaned rows, gives `id` and `messages`)."""
    return {"drop": row["drop"], "line": row["line"], "raw_sha256": row.get("raw_sha256"), "code": CODE,
            "reason": f"label conflict: the same input (case, punctuation and whitespace aside) as "
                      f"{where(others, row['drop'])} with a different answer; conflicts=quarantine holds every "
                      "such row for a person to decide (or set conflicts=keep or latest)",
            "conflicts_with": [{k: o[k] for k in ("drop", "line")} for o in others[:20]], **text}


def replaced_reason(kept: dict, drop: str) -> str:
    return (f"label conflict: the same input as {where([kept], drop)}, kept with another answer, the latest (of "
            "the newest drop, its last line); conflicts=latest replaces the older answers")


def answer(messages: list[dict]) -> str:
    """The answer of a row as a conflict shows it: its assistant messages."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "assistant")


def input_text(messages: list[dict]) -> str:
    """The input of a row as a conflict shows it: its user messages."""
    return "\n\n".join(m["content"] for m in messages if m["role"] == "user")


def report(rows: list[dict], outcomes: list[str], answers: list[str], text: str) -> dict:
    """One conflict as the metadata and the terminal show it: the input and each row with its answer."""
    return {"input": text[:300], "rows": [{"drop": r["drop"], "line": r["line"], "id": r.get("id"), "answer": a,
                                           "outcome": o} for r, o, a in zip(rows, outcomes, answers)]}


def summary(conflict: dict, width: int = 160) -> str:
    """One line: each row and its answer (answers shortened to `width` characters)."""
    return "; ".join(f"{r['drop']} line {r['line']} ({r['outcome']}): {shorten(r['answer'], width)}"
                     for r in conflict["rows"])


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"
