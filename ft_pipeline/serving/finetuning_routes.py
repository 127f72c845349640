"""OpenAI's Files and fine-tuning jobs endpoints on the serving app (the same API key and error shapes):
`POST/GET /v1/files`, `GET/DELETE /v1/files/{id}`, `GET /v1/files/{id}/content`; `POST/GET
/v1/fine_tuning/jobs`, `GET /v1/fine_tuning/jobs/{id}`, `POST .../cancel`, `GET .../events`, `GET .../checkpoints`.

The logic is ft_pipeline/finetuning's; a job runs in a process of its own (`python -m
ft_pipeline.cli.finetuning_job`), started here and signalled here to cancel; a deleted file that trained a task is
erased from it by `ft-pipeline forget` in that task's home. `ft:` model ids resolve through the jobs table to the
registered version their job made (`FineTuning.served`)."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from ft_pipeline import settings
from ft_pipeline.finetuning import job_files, progress, validation
from ft_pipeline.finetuning import jobs as ft_jobs
from ft_pipeline.finetuning.store import ACTIVE, FineTuningStore, NotFound, new_id
from ft_pipeline.processes import pid_alive
from ft_pipeline.serving.protocol import ApiError

log = logging.getLogger("ft_pipeline.serving")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
CANCEL_WAIT_S = 120.0  # how long cancel waits for the job's run to stop


class FineTuning:
    """The server's handle on the fine-tuning store (opened on first use) and the models its jobs registered."""

    def __init__(self, root: Path | None = None, max_file_bytes: int = 512 << 20, keep_versions: int = 3,
                 load=None):
        self.root, self.max_file_bytes, self.keep = root, max_file_bytes, keep_versions
        self._load = load  # how a version is loaded (the catalog's shared bases); None: adapters.Bases of its own
        self._store: FineTuningStore | None = None
        self._lock = threading.Lock()
        self._models: dict = {}  # registered model name -> ModelStore
        self._children: dict[str, subprocess.Popen] = {}

    @property
    def store(self) -> FineTuningStore:
        with self._lock:
            if self._store is None:
                self._store = FineTuningStore(self.root or settings.home() / "finetuning")
            return self._store

    def _used(self) -> bool:
        """Whether this home has fine-tuning files or jobs at all (reading models never creates the store)."""
        return self._store is not None or ((self.root or settings.home() / "finetuning") / "finetuning.db").exists()

    def served(self, model_id: str):
        """The loaded version a `ft:` model id names (ModelNotFound when no succeeded job made it)."""
        from ft_pipeline.serving.models import ModelNotFound, ModelStore

        job = self.store.by_fine_tuned_model(model_id) if self._used() else None
        if job is None:
            raise ModelNotFound(f"The model '{model_id}' does not exist")
        with self._lock:
            if self._load is None:
                from ft_pipeline.serving.adapters import Bases

                self._load = Bases().load
            models = self._models.setdefault(job["registered_model"],
                                             ModelStore(job["registered_model"], keep=self.keep, load=self._load))
        return models.get(f"{job['registered_model']}/{job['version']}")

    def listing(self) -> list[dict]:
        return [{"id": j["fine_tuned_model"], "object": "model", "created": j["finished_at"],
                 "owned_by": "ft_pipeline", "version": j["version"], "output_schema": None}
                for j in (self.store.succeeded() if self._used() else [])]

    def job(self, job_id: str) -> dict:
        """The job, marked failed if its process is gone without having finished it."""
        row = self.store.job(job_id)
        child = self._children.get(job_id)
        if child is not None and child.poll() is not None:
            self._children.pop(job_id, None)
        if row["status"] in ACTIVE and row["pid"] is not None and not pid_alive(row["pid"]):
            row = self.store.finish(job_id, "failed", {"code": "server_error", "param": None, "message":
                                    f"the job's process (pid {row['pid']}) ended without finishing the job; see "
                                    f"{self.log_path(job_id)}"})
        return row

    def log_path(self, job_id: str) -> Path:
        return self.store.root / "jobs" / f"{job_id}.log"

    def launch(self, job_id: str) -> None:
        path = self.log_path(job_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            child = subprocess.Popen([sys.executable, "-m", "ft_pipeline.cli.finetuning_job", job_id],
                                     stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=settings.REPO_ROOT)
        self._children[job_id] = child
        self.store.update_job(job_id, pid=child.pid)

    def cancel(self, job_id: str) -> dict:
        row = self.job(job_id)
        if row["status"] not in ACTIVE:
            raise ApiError(400, f"Job {job_id} has already {row['status']} and cannot be cancelled.",
                           param="fine_tuning_job_id", code="invalid_request")
        try:
            os.kill(row["pid"], signal.SIGTERM)  # Ctrl-C for the job's run: Dagster marks it, slots are freed
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + CANCEL_WAIT_S
        while pid_alive(row["pid"]) and time.monotonic() < deadline:
            time.sleep(0.2)
            child = self._children.get(job_id)
            if child is not None:
                child.poll()
        return self.store.finish(job_id, "cancelled")  # the runner has set it; a stuck one is marked here

    def erase(self, row: dict) -> list[str]:
        """Erase a deleted file's rows from every task that trained on it (`ft-pipeline forget --task`, each drop
        its job made of the file: finetuning/job_files.py); returns the tasks."""
        methods: dict[str, str] = {}
        for j in self.store.jobs_using(row["id"]):
            if j["status"] not in ACTIVE and methods.get(j["task"]) != "dpo":
                methods[j["task"]] = j["method"]["type"]
        for task, method in sorted(methods.items()):
            if not (self.store.root.parent / "tasks" / task).is_dir():  # the task's files: none, nothing to erase
                continue
            with tempfile.TemporaryDirectory(dir=self.store.root) as raw:
                laid = job_files.lay_out(Path(raw) / task, {row["id"]: Path(row["path"])}, method)
                env = {**os.environ, "FT_PIPELINE_HOME": str(self.store.root.parent), "FT_PIPELINE_RAW_DIR": raw,
                       "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri(self.store.root.parent)}
                for drop in laid.erasable:
                    forget = ["forget", "--task", task, "--drop", drop, "--all-lines", "--reason",
                              f"file {row['id']} deleted through the API"]
                    done = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", *forget], env=env,
                                          capture_output=True, text=True, cwd=settings.REPO_ROOT)
                    if done.returncode != 0:
                        raise ApiError(500, f"Erasing the rows of {row['id']} from task {task} failed: "
                                            f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}",
                                       type="server_error")
                    log.info("file %s erased from task %s (%s): %s", row["id"], task, drop,
                             done.stdout.strip().splitlines()[:1])
        return sorted(methods)


def _file_object(row: dict) -> dict:
    return {"object": "file", "id": row["id"], "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "expires_at": None,
            "status_details": None}


def _limit(q, default: int, most: int) -> int:
    raw = q.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ApiError(400, f"Invalid 'limit': expected an integer from 1 to {most}, got '{raw[:20]}'.",
                       param="limit", code="invalid_value")
    return int(raw)


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(400, "Upload the file as multipart/form-data with the fields 'file' and 'purpose'.",
                       code="invalid_request")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            out[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return out


def add_routes(app: FastAPI, ft: FineTuning, check_key) -> None:
    auth = [Depends(check_key)]

    async def call(fn, *args):
        try:
            return await run_in_threadpool(fn, *args)
        except NotFound as e:
            raise ApiError(404, str(e), code="not_found") from None

    @app.post("/v1/files", dependencies=auth)
    async def upload(request: Request):
        limit = ft.max_file_bytes
        declared = request.headers.get("content-length", "")
        too_big = ApiError(413, f"The file is larger than this server's limit of {limit} bytes.", param="file",
                           code="file_too_large")
        if declared.isdigit() and int(declared) > limit + 65536:  # the form's own fields around the file
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + 65536:
                raise too_big
            chunks.append(chunk)
        form = _multipart(request.headers.get("content-type", ""), b"".join(chunks))
        if "file" not in form or form["file"][0] is None:
            raise ApiError(400, "Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
        purpose = form.get("purpose", (None, b""))[1].decode("utf-8", errors="replace")
        if purpose not in PURPOSES:
            raise ApiError(400, f"Invalid 'purpose': expected one of {', '.join(PURPOSES)}, got '{purpose[:40]}'.",
                           param="purpose", code="invalid_value")
        filename, data = form["file"]
        if len(data) > limit:
            raise too_big
        return _file_object(await run_in_threadpool(_store_file, ft.store, filename, purpose, data))

    @app.get("/v1/files", dependencies=auth)
    async def list_files(request: Request):
        q = request.query_params
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid 'order': expected 'asc' or 'desc', got '{order[:20]}'.", param="order",
                           code="invalid_value")
        rows, more = await call(ft.store.files, q.get("purpose") or None, q.get("after") or None,
                                _limit(q, 10000, 10000), order)
        data = [_file_object(r) for r in rows]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @app.get("/v1/files/{file_id}", dependencies=auth)
    async def retrieve_file(file_id: str):
        return _file_object(await call(ft.store.file, file_id))

    @app.get("/v1/files/{file_id}/content", dependencies=auth)
    async def file_content(file_id: str):
        row = await call(ft.store.file, file_id)
        return Response(Path(row["path"]).read_bytes(), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", dependencies=auth)
    async def delete_file(file_id: str):
        row = await call(ft.store.file, file_id)
        if busy := [j["id"] for j in ft.store.jobs_using(file_id) if j["status"] in ACTIVE]:
            raise ApiError(400, f"File {file_id} is used by fine-tuning job {busy[0]}, which has not finished; "
                                "cancel it or wait for it before deleting the file.", param="file_id",
                           code="file_in_use")
        await run_in_threadpool(ft.erase, row)
        await call(ft.store.delete_file, file_id)
        return {"object": "file", "id": file_id, "deleted": True}

    @app.post("/v1/fine_tuning/jobs", dependencies=auth)
    async def create_job(request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"We could not parse the JSON body of your request: {e}.",
                           code="invalid_json") from None
        return await run_in_threadpool(_create, ft, body)

    @app.get("/v1/fine_tuning/jobs", dependencies=auth)
    async def list_jobs(request: Request):
        q = request.query_params
        rows, more = await call(ft.store.jobs, q.get("after") or None, _limit(q, 20, 100))
        return {"object": "list", "data": [ft_jobs.job_object(r) for r in rows], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}", dependencies=auth)
    async def retrieve_job(job_id: str):
        return ft_jobs.job_object(await call(ft.job, job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", dependencies=auth)
    async def cancel_job(job_id: str):
        return ft_jobs.job_object(await call(ft.cancel, job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events", dependencies=auth)
    async def job_events(job_id: str, request: Request):
        await call(ft.job, job_id)
        q = request.query_params
        rows, more = await call(ft.store.events, job_id, q.get("after") or None, _limit(q, 20, 1000))
        return {"object": "list", "data": [{"object": "fine_tuning.job.event", **r} for r in rows], "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", dependencies=auth)
    async def job_checkpoints(job_id: str, request: Request):
        job = await call(ft.job, job_id)
        q = request.query_params
        model = job["fine_tuned_model"] or ft_jobs.fine_tuned_model(job["model"], job["suffix"], job_id)
        found = [progress.checkpoint_object(job_id, model, r) for r in await call(ft.store.checkpoints, job_id)]
        if after := q.get("after"):
            ids = [c["id"] for c in found]
            found = found[ids.index(after) + 1:] if after in ids else []
        limit = _limit(q, 10, 100)
        page = found[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(found) > limit}


def _store_file(store: FineTuningStore, filename: str, purpose: str, data: bytes) -> dict:
    """Check a fine-tune file with the data layer, then keep it; nothing is kept when it is refused."""
    file_id = new_id("file")
    final = store.files_dir / f"{file_id}{Path(filename).suffix.lower() or '.bin'}"
    tmp = store.files_dir / f".incoming-{file_id}{final.suffix}"
    tmp.write_bytes(data)
    try:
        rows = 0
        if purpose == "fine-tune":
            if Path(filename).suffix.lower() != ".jsonl":
                raise validation.InvalidFile(f"Invalid file format: a fine-tune file must be JSONL (.jsonl), not "
                                             f"'{filename[:80]}'.")
            rows = len(validation.read(tmp).rows)
        tmp.rename(final)
    except validation.InvalidFile as e:
        tmp.unlink(missing_ok=True)
        raise ApiError(400, str(e), param="file", code="invalid_file_format") from None
    return store.add_file(file_id, filename, purpose, final, hashlib.sha256(data).hexdigest(), rows)


def _create(ft: FineTuning, body) -> dict:
    try:
        req = ft_jobs.check_create(body, ft.store.file)
    except ft_jobs.RequestError as e:
        raise ApiError(e.status, e.message, param=e.param, code=e.code) from None
    job_id = new_id("ftjob")
    task = ft_jobs.task_name(job_id, req["suffix"])
    row = ft.store.add_job({**req, "id": job_id, "created_at": int(time.time()), "task": task,
                            "hyperparameters": req["method"][req["method"]["type"]]["hyperparameters"],
                            "status": "validating_files"})
    ft.store.add_event(job_id, f"Created fine-tuning job: {job_id} (task {task})")
    try:
        ft.launch(job_id)
    except OSError as e:
        ft.store.finish(job_id, "failed", {"code": "server_error", "message": f"could not start the job: {e}",
                                           "param": None})
        raise ApiError(500, f"Could not start the fine-tuning job: {e}", type="server_error") from None
    return ft_jobs.job_object(ft.store.job(row["id"]))
