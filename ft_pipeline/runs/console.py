"""What `ft-pipeline run` prints while it works: one line per stage as it finishes, a progress bar with ETA
while an adapter trains and while each model answers the evaluation sets, a line per model evaluated. Dagster's
run log (the UI, `dagster debug`) keeps every detail; this is a Dagster logger (`stages`) that `ft-pipeline run`
turns on instead of the console logger."""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager

import dagster as dg

_STEP = re.compile(r"^step (\d+)/(\d+) loss=(\S+)")
_EVAL = re.compile(r"^evaluating (.+): (\d+)/(\d+) answers$")


def stage_lines_only() -> None:
    """For `ft-pipeline run`: the terminal shows the stages logger's lines alone. Dagster captures each step's
    stdout and stderr into its compute logs (the run's stdout/stderr in the UI) and also copies them to the terminal
    through a `tail -F` and a watch_orphans.py helper per stream and step; that copy put MLflow's lines ("Creating
    initial MLflow database tables", "Successfully registered model") between the stage lines, and a Ctrl-C,
    which the terminal sends to the whole foreground process group, printed the helpers' KeyboardInterrupt
    tracebacks above the run's own line. Here a step's output goes to the compute logs only, and no helper
    process starts. Process-wide: `ft-pipeline run` calls it once, before its first run."""
    from dagster._core.execution.compute_logs import redirect_to_file
    from dagster._core.storage import local_compute_log_manager as manager
    from dagster._utils import ensure_file

    @contextmanager
    def to_file_only(stream, filepath):
        ensure_file(filepath)
        with redirect_to_file(stream, filepath):
            yield None, None  # where mirror_stream_to_file yields the pids of its two helpers

    if not hasattr(manager, "mirror_stream_to_file"):  # dagster 1.13.27's name: fail if it moves, not copy again
        raise RuntimeError("dagster's LocalComputeLogManager no longer mirrors through mirror_stream_to_file")
    manager.mirror_stream_to_file = to_file_only


def _own_copy(stream):
    """A file of its own on where `stream` writes now (the terminal, when taken before a step starts): a step's
    compute log capture points file descriptors 1 and 2 at its log files, and the stage lines printed during the
    step still go to the terminal. `stream` itself where it has no file descriptor (pytest's capture)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8")


class StageHandler(logging.Handler):
    def __init__(self, stream=None, bar_stream=None):
        super().__init__(logging.DEBUG)  # Dagster logs its step events at DEBUG
        self.stream = stream or sys.stdout
        self.bar_stream = bar_stream  # None: sys.stderr as it is when a bar starts
        self.bar = None
        self.checks_seen: set = set()

    def _print(self, line: str) -> None:
        sys.stdout.flush()  # what the command line printed before, when this handler writes to a copy of stdout
        if self.bar is not None:  # the line above the bar (tqdm.write clears only bars on sys.stdout/sys.stderr)
            self.bar.clear()
            print(line, file=self.stream, flush=True)
            self.bar.refresh()
        else:
            print(line, file=self.stream, flush=True)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        ev, step = meta.get("dagster_event"), meta.get("step_key") or ""
        part = (meta.get("job_tags") or {}).get("dagster/partition")
        name = f"{step}[{part}]" if part and step else step
        if ev is None:
            if record.levelno >= logging.INFO:
                self._message(str(meta.get("orig_message", record.getMessage())))
            return
        kind = ev.event_type_value
        if kind == "STEP_SUCCESS":
            self._close_bar()
            self._print(f"  ok    {name:58s} {ev.event_specific_data.duration_ms / 1000:7.1f}s")
        elif kind == "STEP_FAILURE":
            self._close_bar()
            data = ev.event_specific_data
            user = data.user_failure_data
            why = user.description if user and user.description else data.error.message.strip().splitlines()[-1]
            self._print(f"  FAIL  {name}: {why}")
        elif kind == "STEP_SKIPPED":
            self._print(f"  skip  {name} (an upstream step did not succeed)")
        elif kind == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if (seen := (meta.get("run_id"), data.check_name, data.passed)) in self.checks_seen:
                return  # a multi-asset step reports its check once per asset it writes
            self.checks_seen.add(seen)
            warns = getattr(data, "severity", None) == dg.AssetCheckSeverity.WARN  # reports, blocks nothing
            status = "ok" if data.passed else "warn" if warns else "FAIL"
            self._print(f"  {status:5s} check {data.check_name}: {data.description or ''}".rstrip(": "))

    def _progress(self, desc: str, done: int, total: int, unit: str):
        """The bar for `desc` (a new one when the last was for something else), moved to `done`."""
        if self.bar is not None and self.bar.desc != desc:
            self._close_bar()
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, file=self.bar_stream or sys.stderr,
                            leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        return self.bar

    def _message(self, msg: str) -> None:
        if m := _STEP.match(msg):
            bar = self._progress("  training", int(m.group(1)), int(m.group(2)), "step")
            try:
                bar.set_postfix_str(f"loss {float(m.group(3)):.4f}", refresh=True)
            except ValueError:  # a log line without a loss (loss=None)
                pass
        elif m := _EVAL.match(msg):
            self._progress(f"  evaluating {m.group(1)}", int(m.group(2)), int(m.group(3)), "answer")
        elif msg.startswith(("evaluated ", "warm start: ", "no warm start: ")):
            self._close_bar()
            self._print(f"        {msg}")


@dg.logger(description="One line per finished stage and a training progress bar (what `ft-pipeline run` shows).")
def stages_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    log = logging.getLogger("ft_pipeline.stages")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    if not any(isinstance(h, StageHandler) for h in log.handlers):
        log.addHandler(StageHandler(_own_copy(sys.stdout), _own_copy(sys.stderr)))
    return log


LOGGERS = {"console": dg.colored_console_logger, "stages": stages_logger}
