"""The stored completions: one SQLite database, `<home>/traffic/completions.db`, in WAL mode.

Why SQLite in WAL mode: a commit is one append to the write-ahead log, a reader (the list endpoint, `ft-pipeline
review`, the `reviewed_traffic` asset) reads its snapshot while a writer appends, and a process killed
mid-write leaves the database as of its last commit (an interrupted transaction is rolled back when the file is
next opened). `insert` returns after its commit, and the server answers after `insert` returns: a completion the
client saw acknowledged is in the database.

Durability: `synchronous=NORMAL` by default. In WAL mode a commit then reaches the operating system before
`insert` returns, which is what survives the server's process dying (SIGKILL, OOM, a crash): the kernel writes
the pages out whatever happens to the process. It does not wait for the disk, so a power loss or a kernel panic
can lose the last commits (never corrupt the file); `synchronous=FULL` (`FT_PIPELINE_STORE_SYNC=full`) adds one
fsync per stored completion, in the request's thread, for that case.

Rows are ordered by (created, rowid): `created` is the second the request arrived, as in the completion's
`created`, and the rowid breaks ties in the order of storing. Deleted rows are overwritten (secure_delete) and
the log checkpointed, so a deleted completion's text does not linger in the file."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ft_pipeline import settings
from ft_pipeline.traffic.capture import redact_metadata, redact_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    id TEXT PRIMARY KEY,            -- chatcmpl-..., the id the client got
    created INTEGER NOT NULL,       -- unix seconds, the completion's `created`
    model TEXT NOT NULL,            -- the model id the client asked for
    registered_model TEXT NOT NULL, -- the registered model that answered ...
    version TEXT NOT NULL,          -- ... and its version
    messages TEXT NOT NULL,         -- JSON: the request's messages, redacted
    answer TEXT NOT NULL,           -- redacted
    response_format TEXT,           -- JSON, or NULL for plain text
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms REAL NOT NULL,       -- request received to answer complete
    mean_logprob REAL,              -- mean log-probability of the answer's tokens under the model (temperature 1)
    metadata TEXT NOT NULL,         -- JSON object of strings
    redactions TEXT NOT NULL,       -- JSON: {"EMAIL": 1, ...} replaced at capture
    params TEXT NOT NULL,           -- JSON: temperature, top_p, seed, max_tokens, stop as sent
    requested INTEGER NOT NULL,     -- 1: the client sent store=true; 0: stored by `--store all`
    review TEXT,                    -- accepted | corrected | rejected | NULL (no verdict yet)
    correction TEXT,
    reviewer TEXT,
    reviewed_at INTEGER
);
CREATE INDEX IF NOT EXISTS completions_order ON completions (created);
CREATE INDEX IF NOT EXISTS completions_review ON completions (review, created);
"""
_JSON = ("messages", "response_format", "metadata", "redactions", "params")
_COLUMNS = ("id", "created", "model", "registered_model", "version", "messages", "answer", "response_format",
            "finish_reason", "prompt_tokens", "completion_tokens", "latency_ms", "mean_logprob", "metadata",
            "redactions", "params", "requested", "review", "correction", "reviewer", "reviewed_at")


class NotFound(LookupError):
    """No stored completion has this id (HTTP 404)."""


def db_path(home: Path | str) -> Path:
    """The database of a pipeline home: `$FT_PIPELINE_STORE_PATH` where it is set (as the server and `review`
    read it), else `<home>/traffic/completions.db`."""
    moved = os.environ.get("FT_PIPELINE_STORE_PATH")
    return Path(moved) if moved else Path(home) / "traffic" / "completions.db"


def default_path() -> Path:
    return db_path(settings.home())


class CompletionStore:
    """The database, opened once per process and shared by threads (one connection per thread). Every write is
    its own transaction, committed before the method returns."""

    def __init__(self, path: Path | str | None = None, retention_days: float | None = None,
                 synchronous: str = "normal", purge_every_s: float = 3600.0):
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be normal or full, not {synchronous!r}")
        self.path = Path(path) if path else default_path()
        self.retention_days, self.synchronous, self.purge_every_s = retention_days, synchronous.upper(), purge_every_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._last_purge = 0.0
        self._conn().executescript(_SCHEMA)  # each statement in its own transaction; all are idempotent
        self.purge()

    # connections

    def _conn(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            # isolation_level=None: no implicit transactions; writes open their own (BEGIN IMMEDIATE) below.
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                raise RuntimeError(f"{self.path}: SQLite refused WAL mode (a network file system?)")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            db.execute("PRAGMA secure_delete=ON")
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    class _Tx:
        def __init__(self, db):
            self.db = db

        def __enter__(self):
            self.db.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock upgrading a read
            return self.db

        def __exit__(self, exc_type, *_):
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _write(self) -> "CompletionStore._Tx":
        return self._Tx(self._conn())

    def close(self) -> None:
        with self._lock:
            for db in self._all:
                db.close()
            self._all.clear()
        self._local = threading.local()

    # rows

    @staticmethod
    def _row(r: sqlite3.Row) -> dict:
        out = dict(r)
        for k in _JSON:
            out[k] = json.loads(out[k]) if out[k] is not None else None
        out["requested"] = bool(out["requested"])
        return out

    def insert(self, rec: dict) -> None:
        """Store one completion (a `capture.record`); returns once it is committed."""
        values = [json.dumps(rec.get(k), ensure_ascii=False) if k in _JSON and rec.get(k) is not None else rec.get(k)
                  for k in _COLUMNS]
        values[_COLUMNS.index("requested")] = int(bool(rec.get("requested", True)))
        with self._write() as db:
            db.execute(f"INSERT INTO completions ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                       values)
        if self.retention_days and time.monotonic() - self._last_purge > self.purge_every_s:
            self.purge()

    def get(self, id: str) -> dict:
        r = self._conn().execute("SELECT * FROM completions WHERE id = ?", (id,)).fetchone()
        if r is None:
            raise NotFound(f"No chat completion found with id '{id}'.")
        return self._row(r)

    def list(self, model: str | None = None, metadata: dict[str, str] | None = None, after: str | None = None,
             limit: int = 20, order: str = "asc", unreviewed: bool = False) -> tuple[list[dict], bool]:
        """Up to `limit` completions in `order` of (created, storing), the first after the one with id `after`;
        `model` matches the id the client asked for or NAME/VERSION of the version that answered; every
        `metadata` pair must be in the completion's metadata; `unreviewed`: only those without a verdict.
        Returns (rows, whether more follow). NotFound when `after` names no stored completion."""
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc, not {order!r}")
        where, args = [], []
        if model:
            where.append("(model = ? OR registered_model || '/' || version = ?)")
            args += [model, model]
        for k, v in (metadata or {}).items():
            where.append("EXISTS (SELECT 1 FROM json_each(completions.metadata) j WHERE j.key = ? AND j.value = ?)")
            args += [k, v]
        if unreviewed:
            where.append("review IS NULL")
        db = self._conn()
        if after:
            ref = db.execute("SELECT created, rowid FROM completions WHERE id = ?", (after,)).fetchone()
            if ref is None:
                raise NotFound(f"No chat completion found with id '{after}' (the 'after' cursor).")
            where.append(f"(created, rowid) {'>' if order == 'asc' else '<'} (?, ?)")
            args += [ref[0], ref[1]]
        sql = (f"SELECT * FROM completions {'WHERE ' + ' AND '.join(where) if where else ''} "
               f"ORDER BY created {order}, rowid {order} LIMIT ?")
        rows = db.execute(sql, [*args, limit + 1]).fetchall()
        return [self._row(r) for r in rows[:limit]], len(rows) > limit

    def reviewed(self, since: int, until: int) -> list[dict]:
        """Completions whose verdict was given in [since, until) (unix seconds), oldest verdict first."""
        rows = self._conn().execute("SELECT * FROM completions WHERE review IS NOT NULL AND reviewed_at >= ? AND "
                                    "reviewed_at < ? ORDER BY reviewed_at, rowid", (since, until)).fetchall()
        return [self._row(r) for r in rows]

    def created_between(self, since: int, until: int) -> list[dict]:
        """Completions created in [since, until) (unix seconds), in order of storing."""
        rows = self._conn().execute("SELECT * FROM completions WHERE created >= ? AND created < ? "
                                    "ORDER BY created, rowid", (since, until)).fetchall()
        return [self._row(r) for r in rows]

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM completions").fetchone()[0]

    def update_metadata(self, id: str, metadata: dict[str, str], verdict: tuple[str, str | None] | None = None,
                        reviewer: str | None = None) -> dict:
        """Replace the completion's metadata (OpenAI's update), its values redacted as at capture and what was
        replaced added to the completion's `redactions`; with `verdict`, record it as `set_verdict`."""
        counts: Counter = Counter()
        metadata = redact_metadata(metadata, counts)
        with self._write() as db:
            row = db.execute("SELECT redactions FROM completions WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise NotFound(f"No chat completion found with id '{id}'.")
            db.execute("UPDATE completions SET metadata = ?, redactions = ? WHERE id = ?",
                       (json.dumps(metadata, ensure_ascii=False),
                        json.dumps(dict(Counter(json.loads(row[0])) + counts)), id))
            if verdict is not None:
                self._verdict(db, id, *verdict, reviewer or "api")
        return self.get(id)

    def set_verdict(self, id: str, review: str, correction: str | None, reviewer: str) -> dict:
        """Record a review: who, when, the verdict, the correction; `review` goes into the metadata too (so the
        list's metadata filter finds reviewed completions). `corrected` with no correction keeps the one
        recorded before; ValueError when there is none."""
        with self._write() as db:
            row = db.execute("SELECT metadata FROM completions WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise NotFound(f"No chat completion found with id '{id}'.")
            md = {**json.loads(row[0]), "review": review}
            if len(md) > 16:  # OpenAI's limit, kept by every path that writes metadata
                md.pop("review")
            db.execute("UPDATE completions SET metadata = ? WHERE id = ?", (json.dumps(md, ensure_ascii=False), id))
            self._verdict(db, id, review, correction, reviewer)
        return self.get(id)

    @staticmethod
    def _verdict(db, id: str, review: str, correction: str | None, reviewer: str) -> None:
        if review == "corrected" and correction is None:
            correction = db.execute("SELECT correction FROM completions WHERE id = ?", (id,)).fetchone()[0]
            if correction is None:
                raise ValueError("a 'corrected' verdict needs a correction")
        correction = redact_text(correction)  # training text: redacted as the answer was (idempotent)
        db.execute("UPDATE completions SET review = ?, correction = ?, reviewer = ?, reviewed_at = ? WHERE id = ?",
                   (review, correction if review == "corrected" else None, reviewer, int(time.time()), id))

    def delete(self, id: str) -> None:
        with self._write() as db:
            if db.execute("DELETE FROM completions WHERE id = ?", (id,)).rowcount == 0:
                raise NotFound(f"No chat completion found with id '{id}'.")
        self.checkpoint()

    def delete_where(self, ids: list[str]) -> int:
        """Delete these completions (the ones that exist); how many were."""
        with self._write() as db:
            n = sum(db.execute("DELETE FROM completions WHERE id = ?", (i,)).rowcount for i in ids)
        if n:
            self.checkpoint()
        return n

    def checkpoint(self) -> None:
        """Copy the log into the database file and empty it, so a deleted row's old pages do not stay in the log
        (best effort: a reader holding an old snapshot keeps the log until it is done)."""
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def purge(self, now: float | None = None) -> int:
        """Delete completions older than the retention period (none when it is unset or <= 0); how many."""
        self._last_purge = time.monotonic()
        if not self.retention_days or self.retention_days <= 0:
            return 0
        cutoff = int((now if now is not None else time.time()) - self.retention_days * 86400)
        with self._write() as db:
            n = db.execute("DELETE FROM completions WHERE created < ?", (cutoff,)).rowcount
        if n:
            self.checkpoint()
        return n

    def pragma(self, name: str) -> Any:
        return self._conn().execute(f"PRAGMA {name}").fetchone()[0]
