"""Erasure reaches the stored completions (issue 31): `ft-pipeline forget` deletes the stored completion a
forgotten row was made from (the `completion_id` on a reviewed_traffic drop's line), a stored completion named
by `--completion-id` together with every raw row made from it, and with `--text` the stored completions whose
conversation, answer or correction contain the text. The reviewed_traffic drops are files the pipeline wrote,
so their erased lines are always rewritten with a note, as `--redact-source` does for a drop of yours."""

from __future__ import annotations

import json
from pathlib import Path

from ft_pipeline.traffic.reviewed import DROP_SUFFIX
from ft_pipeline.traffic.store import CompletionStore, db_path


def _store(home: Path) -> CompletionStore | None:
    path = db_path(home)
    return CompletionStore(path) if path.exists() else None  # never create the database to erase from it


def existing(home: Path, ids: set[str]) -> list[str]:
    """Those of `ids` that are stored completions."""
    if not ids or (store := _store(home)) is None:
        return []
    try:
        return sorted(i for i in ids if store._conn().execute("SELECT 1 FROM completions WHERE id = ?",
                                                               (i,)).fetchone())
    finally:
        store.close()


def matching(home: Path, text: str) -> list[str]:
    """Ids of the stored completions whose messages, answer or correction contain `text` (as written, or as JSON
    escapes it inside the stored messages)."""
    if (store := _store(home)) is None:
        return []
    escaped = json.dumps(text, ensure_ascii=False)[1:-1]
    try:
        rows = store._conn().execute(
            "SELECT id FROM completions WHERE instr(messages, ?) OR instr(messages, ?) OR instr(answer, ?) "
            "OR instr(coalesce(correction, ''), ?) ORDER BY created, rowid", (text, escaped, text, text)).fetchall()
        return [r[0] for r in rows]
    finally:
        store.close()


def delete(home: Path, ids: set[str]) -> int:
    """Delete these stored completions (overwritten and checkpointed: see CompletionStore.delete_where)."""
    if not ids or (store := _store(home)) is None:
        return 0
    try:
        return store.delete_where(sorted(ids))
    finally:
        store.close()


def is_reviewed_drop(row: dict) -> bool:
    """A row of a drop the reviewed_traffic asset wrote (SFT or preference)."""
    return row["file"].endswith(f"-{DROP_SUFFIX}.jsonl")
