"""A killed `ft-pipeline run` never blocks the next one.

- One `ft-pipeline run` at a time per home: a second one waits on a lock file (the kernel drops the lock of a
  killed process) and says who holds it.
- Runs are tagged with the host and pid that run them (and that process's start time, so a reused pid does not
  pass for the old process). On start, runs of this host whose process is gone are marked failed and their
  concurrency slots freed, as Dagster's daemon does for the runs it launched.
- A step in a pool (lora_adapter, pool `gpu`) gets its slot from Dagster's slot queue before its run starts, here,
  sleeping between tries and naming the holder. Left to execute_in_process, dagster 1.13.27 waits for the slot in a
  loop that never sleeps (InstanceConcurrencyContext.interval_to_next_pending_claim_check returns min(0, ...)) and
  never looks at the Ctrl-C it captured.
- SIGTERM is Ctrl-C. Interrupted inside a run, Dagster marks the run failed; `execute` frees its slots and raises
  KeyboardInterrupt. Training checkpoints stay where they are, and the next run resumes from the last one."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from ft_pipeline.processes import pid_alive, start_time

HOST, PID, PID_START = "ft_pipeline/host", "ft_pipeline/pid", "ft_pipeline/pid_start"
POLL_S = 1.0  # between tries for a lock or a slot
MESSAGE_EVERY_S = 60.0


def owner_tags() -> dict[str, str]:
    return {HOST: socket.gethostname(), PID: str(os.getpid()), PID_START: start_time(os.getpid()) or ""}


def process_alive(tags: dict) -> bool | None:
    """Whether the process named by owner tags still runs (`processes.pid_alive`, with its start time when the
    tags have it); None when it ran elsewhere or is not named."""
    if tags.get(HOST) != socket.gethostname() or not tags.get(PID, "").isdigit():
        return None
    return pid_alive(int(tags[PID]), tags.get(PID_START) or None)


def sigterm_as_interrupt() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@contextmanager
def _exclusive(path: Path, waiting, log, who: str = ""):
    """Hold an exclusive lock on the file `path`, waiting (interruptibly) while another process holds it and
    logging `waiting(holder)` once a minute, where holder is what that process wrote in the file (`who` first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        told = None
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if told is None or time.monotonic() - told > MESSAGE_EVERY_S:
                    f.seek(0)
                    log(waiting(f.read().strip() or "unknown process"))
                    told = time.monotonic()
                time.sleep(POLL_S)
        f.seek(0)
        f.truncate()
        since = dt.datetime.now().isoformat(timespec="seconds")
        f.write(f"{who}pid {os.getpid()} on {socket.gethostname()}, since {since}")
        f.flush()
        yield


def home_lock(home: Path, log=print):
    """Hold the home's run lock, waiting (interruptibly) while another `ft-pipeline run` holds it."""
    return _exclusive(home / "run.lock", lambda holder: f"waiting: another ft-pipeline run holds {home} ({holder}); "
                      "it continues when that run ends (Ctrl-C stops waiting)", log)


def pool_lock(home: Path, pool: str, step: str, run_id: str, log=print):
    """Hold the home's lock of `pool` for the whole step, waiting while another step of the pool holds it.

    Dagster's pool should already keep the pool's steps apart, but on SQLite storage (the default) its slot claim
    is not atomic in dagster 1.13.27: `claim_concurrency_slot` checks for a free slot and queues the step in two
    statements, and SELECT ... FOR UPDATE is a no-op in SQLite, so two steps that ask at the same moment can both
    be told they hold the one slot. The steps of pool `gpu` train on the machine's accelerator and write the
    home's model folder, so they also take this lock (the kernel drops it when a process dies)."""
    return _exclusive(home / f"pool-{pool}.lock", lambda holder: f"{step} waits for pool {pool!r} on {home}, held by "
                      f"{holder}; it starts when that step ends", log, who=f"run {run_id} ({step}), ")


def _claims_dir(home: Path) -> Path:
    return home / "dagster" / "ft_claims"


def reap(instance, home: Path) -> list[str]:
    """Mark failed the runs of this host whose process is gone, and free the slots of dead and finished runs.
    Returns one line per run dealt with."""
    from dagster import DagsterRunStatus, RunsFilter

    lines = []
    active = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED,
              DagsterRunStatus.CANCELING]
    for run in instance.get_runs(RunsFilter(statuses=active, tags={HOST: socket.gethostname()})):
        if process_alive(run.tags) is False:
            instance.report_run_failed(run, f"marked failed by ft-pipeline run: its process (pid {run.tags[PID]} on "
                                            f"{run.tags[HOST]}) is gone")
            lines.append(f"run {run.run_id} ({run.job_name}, {run.status.value}): its process {run.tags[PID]} is "
                         "gone; marked failed and its slots freed")
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return lines
    claims = _claims_dir(home)
    for run_id in storage.get_concurrency_run_ids():
        run, marker = instance.get_run_by_id(run_id), claims / f"{run_id}.json"
        dead_claim = run is None and marker.exists() and process_alive(json.loads(marker.read_text())) is False
        if (run is not None and run.is_finished) or dead_claim:
            storage.free_concurrency_slots_for_run(run_id)
            marker.unlink(missing_ok=True)
    return lines


def holders(instance, pool: str, exclude: str = "") -> list[str]:
    """Who holds the slots of `pool`: run id, job, status, start time and whether its process is alive."""
    out = []
    for slot in instance.event_log_storage.get_concurrency_info(pool).claimed_slots:
        if slot.run_id == exclude:
            continue
        record = instance.get_run_record_by_id(slot.run_id)
        if record is None:
            out.append(f"run {slot.run_id} (step {slot.step_key}; not started yet)")
            continue
        run, started = record.dagster_run, record.start_time
        when = dt.datetime.fromtimestamp(started).isoformat(timespec="seconds") if started else "not started"
        alive = process_alive(run.tags)
        who = ("launched outside ft-pipeline run or on another host" if alive is None else
               f"pid {run.tags[PID]} {'alive' if alive else 'gone'}")
        out.append(f"run {run.run_id} ({run.job_name}, {run.status.value}, started {when}, "
                   f"step {slot.step_key}, {who})")
    return out


def _wait_for_slot(instance, pool: str, run_id: str, step: str, log) -> None:
    storage = instance.event_log_storage
    if pool not in {p.name for p in storage.get_pool_limits()}:
        if storage.get_pool_config().default_pool_limit is None:
            return  # an unlimited pool
        storage.initialize_concurrency_limit_to_default(pool)
    told = None
    while not storage.claim_concurrency_slot(pool, run_id, step).is_claimed:
        if told is None or time.monotonic() - told > MESSAGE_EVERY_S:
            held = "; ".join(holders(instance, pool, exclude=run_id)) or "no one yet (queued behind other steps)"
            log(f"{step} waits for a slot in pool {pool!r}, held by {held} (Ctrl-C stops waiting)")
            told = time.monotonic()
        time.sleep(POLL_S)


@contextmanager
def pool_slots(instance, home: Path, job, run_id: str, log=print):
    """Claim, for `run_id`, a slot for the first step of `job` in each pool, before the run starts; the step then
    finds its slot claimed. Freed when the run ends, however it ends. Only the first: the steps of one pool run one
    after another (lora_adapter, then preference_adapter, in pool `gpu` of limit 1), and a later one takes the
    slot its predecessor frees when it finishes; claiming them all here would wait on this run itself forever."""
    from dagster._core.instance.config import PoolGranularity

    storage = instance.event_log_storage
    steps = {}
    for node in job.graph.nodes_in_topological_order:
        if (pool := getattr(node.definition, "pool", None)) and pool not in steps.values():
            steps[node.name] = pool
    if (not steps or not storage.supports_global_concurrency_limits
            or storage.get_pool_config().pool_granularity == PoolGranularity.RUN):
        yield
        return
    marker = _claims_dir(home) / f"{run_id}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(owner_tags()))
    try:
        for step, pool in sorted(steps.items()):
            _wait_for_slot(instance, pool, run_id, step, log)
        yield
    finally:
        storage.free_concurrency_slots_for_run(run_id)
        marker.unlink(missing_ok=True)


def execute(job, instance, home: Path, log=print, run_id: str | None = None, tags: dict | None = None, **kwargs):
    """job.execute_in_process on `instance` (as `run_id` when given), tagged with this process and `tags`, its
    pool slots claimed first; raises KeyboardInterrupt when Ctrl-C or SIGTERM ended the run (Dagster has marked it
    failed by then)."""
    from dagster._core.storage.tags import RUN_FAILURE_REASON_TAG

    run_id = run_id or str(uuid.uuid4())
    with pool_slots(instance, home, job, run_id, log):
        result = job.execute_in_process(instance=instance, run_id=run_id, tags={**(tags or {}), **owner_tags()},
                                        raise_on_error=False, **kwargs)
    run = instance.get_run_by_id(run_id)
    if run is not None and run.tags.get(RUN_FAILURE_REASON_TAG) == "UNEXPECTED_TERMINATION":
        raise KeyboardInterrupt(f"run {run_id} was interrupted")
    return result
