"""Uploaded files and fine-tuning jobs: one SQLite database, `<home>/finetuning/finetuning.db` (WAL: the server
and each job's runner process write it side by side), and the files' bytes beside it in `files/`.

A job's row is written by the server when it is created (status `validating_files`), then by its runner process
(cli/finetuning_job.py) as the job moves: `queued` while another job of its task runs, `running` with its Dagster
run ids, and one of `succeeded | failed | cancelled` at the end. Events are rows of their own, in order."""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, filename TEXT NOT NULL, bytes INTEGER NOT NULL,
    purpose TEXT NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL, rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
    model TEXT NOT NULL, task TEXT NOT NULL, suffix TEXT, training_file TEXT NOT NULL, validation_file TEXT,
    seed INTEGER NOT NULL, metadata TEXT, method TEXT NOT NULL, hyperparameters TEXT NOT NULL,
    status TEXT NOT NULL, error TEXT, fine_tuned_model TEXT, registered_model TEXT, version TEXT,
    finished_at INTEGER, trained_tokens INTEGER, estimated_finish INTEGER, pid INTEGER,
    dagster_run_ids TEXT NOT NULL DEFAULT '[]', result_files TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_task ON jobs (task, status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL, step INTEGER NOT NULL, created_at INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
);
"""
_JOB_JSON = ("metadata", "method", "hyperparameters", "error", "dagster_run_ids", "result_files")
ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")


class NotFound(LookupError):
    pass


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class FineTuningStore:
    """The database and the files folder of one home (`root` = `<home>/finetuning`)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "finetuning.db"
        with closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)


    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    def _run(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with closing(self._connect()) as con:
            return con.execute(sql, args).fetchall()

    # -- files
    def add_file(self, file_id: str, filename: str, purpose: str, path: Path, sha256: str, rows: int) -> dict:
        self._run("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (file_id, int(time.time()), filename, path.stat().st_size, purpose, sha256, str(path), rows))
        return self.file(file_id)

    def file(self, file_id: str) -> dict:
        rows = self._run("SELECT * FROM files WHERE id = ?", (file_id,))
        if not rows:
            raise NotFound(f"No such File object: {file_id}")
        return dict(rows[0])

    def files(self, purpose: str | None, after: str | None, limit: int, order: str) -> tuple[list[dict], bool]:
        sql, args = "SELECT * FROM files WHERE 1=1", []
        if purpose:
            sql, args = sql + " AND purpose = ?", [purpose]
        cmp = "<" if order == "desc" else ">"
        if after:
            ref = self.file(after)
            sql += f" AND (created_at, id) {cmp} (?, ?)"
            args += [ref["created_at"], ref["id"]]
        sql += f" ORDER BY created_at {order.upper()}, id {order.upper()} LIMIT ?"
        rows = [dict(r) for r in self._run(sql, (*args, limit + 1))]
        return rows[:limit], len(rows) > limit

    def delete_file(self, file_id: str) -> dict:
        row = self.file(file_id)
        self._run("DELETE FROM files WHERE id = ?", (file_id,))
        Path(row["path"]).unlink(missing_ok=True)
        return row

    # -- jobs
    def add_job(self, job: dict) -> dict:
        cols = ("id", "created_at", "model", "task", "suffix", "training_file", "validation_file", "seed",
                "metadata", "method", "hyperparameters", "status")
        vals = [json.dumps(job[c]) if c in _JOB_JSON else job[c] for c in cols]
        self._run(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", tuple(vals))
        return self.job(job["id"])

    def job(self, job_id: str) -> dict:
        rows = self._run("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"Could not find fine-tune job: {job_id}")
        return _job_row(rows[0])

    def jobs(self, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them; `after` is the id of the last job of the previous page."""
        sql, args = "SELECT * FROM jobs", []
        if after:
            sql, args = sql + " WHERE seq < ?", [self._seq(after)]
        rows = [_job_row(r) for r in self._run(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit + 1))]
        return rows[:limit], len(rows) > limit

    def _seq(self, job_id: str) -> int:
        rows = self._run("SELECT seq FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFound(f"Could not find fine-tune job: {job_id}")
        return rows[0]["seq"]

    def update_job(self, job_id: str, **fields: Any) -> dict:
        sets = ", ".join(f"{k} = ?" for k in fields)
        vals = [json.dumps(v) if k in _JOB_JSON else v for k, v in fields.items()]
        self._run(f"UPDATE jobs SET {sets} WHERE id = ?", (*vals, job_id))
        return self.job(job_id)

    def finish(self, job_id: str, status: str, error: dict | None = None, **fields: Any) -> dict:
        """Move an unfinished job to a terminal status (a finished one stays as it is)."""
        assert status in TERMINAL
        sets = {"status": status, "error": json.dumps(error) if error else None, "finished_at": int(time.time()),
                "estimated_finish": None, **{k: json.dumps(v) if k in _JOB_JSON else v for k, v in fields.items()}}
        self._run(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ? AND status IN "
                  f"({', '.join('?' * len(ACTIVE))})", (*sets.values(), job_id, *ACTIVE))
        return self.job(job_id)

    def jobs_using(self, file_id: str) -> list[dict]:
        return [_job_row(r) for r in self._run("SELECT * FROM jobs WHERE training_file = ? OR validation_file = ?",
                                               (file_id, file_id))]

    def by_fine_tuned_model(self, model_id: str) -> dict | None:
        rows = self._run("SELECT * FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded'", (model_id,))
        return _job_row(rows[0]) if rows else None

    def succeeded(self) -> list[dict]:
        return [_job_row(r) for r in self._run("SELECT * FROM jobs WHERE status = 'succeeded' ORDER BY seq")]

    # -- events
    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        self._run("INSERT INTO events (job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?)",
                  (job_id, int(time.time()), level, message, type, json.dumps(data) if data is not None else None))

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[dict], bool]:
        """Newest first, as OpenAI lists them; `after` is an event id (`ftevent-<seq>`) of the previous page."""
        sql, args = "SELECT * FROM events WHERE job_id = ?", [job_id]
        if after:
            if not (after.startswith("ftevent-") and after[8:].isdigit()):
                raise NotFound(f"No such event: {after}")
            sql, args = sql + " AND seq < ?", [job_id, int(after[8:])]
        rows = self._run(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit + 1))
        out = [{"id": f"ftevent-{r['seq']}", "created_at": r["created_at"], "level": r["level"],
                "message": r["message"], "type": r["type"], "data": json.loads(r["data"]) if r["data"] else None}
               for r in rows]
        return out[:limit], len(out) > limit


    # -- checkpoints: recorded by the runner while the trainer's checkpoint folders exist (training removes them
    # once the adapter is saved); the last is the registered version itself
    def add_checkpoint(self, job_id: str, step: int, created_at: int, metrics: dict) -> None:
        self._run("INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)",
                  (job_id, step, created_at, json.dumps(metrics)))

    def checkpoints(self, job_id: str) -> list[dict]:
        """Newest first."""
        return [{"step": r["step"], "created_at": r["created_at"], "metrics": json.loads(r["metrics"])}
                for r in self._run("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step DESC", (job_id,))]


def _job_row(row: sqlite3.Row) -> dict:
    out = dict(row)
    for k in _JOB_JSON:
        out[k] = json.loads(out[k]) if out[k] else None
    return out
