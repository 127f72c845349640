"""Whether a process named by its pid still runs: what run control (runs/control.py: the process of an
`ft-pipeline run`) and fine-tuning jobs (finetuning/store.py's job rows, serving's cancel) both ask. Linux's
/proc answers what `kill(pid, 0)` cannot: whether the process is a zombie, and when it started, so a pid the
kernel has since given to another process does not pass for the old one."""

from __future__ import annotations

import os
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None where there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def pid_alive(pid: int | None, started: str | None = None) -> bool:
    """Whether process `pid` runs: it exists (one of another user counts), is no zombie (a child that exited
    and was not yet waited for), and, given `started` (its `start_time` when it was recorded), is that same
    process, not a later one the pid was reused for. What /proc does not say (no /proc) is taken as alive."""
    if not pid or pid <= 0:  # 0 and negative pids name process groups to kill(), not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, owned by another user
    fields = _stat_fields(pid)
    if fields is None:
        return True
    if fields[0] == "Z":
        return False
    return not started or len(fields) <= 19 or fields[19] == started
