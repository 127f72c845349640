"""processes.pid_alive: the one answer run control and fine-tuning jobs give to "does that process still run"."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from ft_pipeline.processes import pid_alive, start_time


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_this_process_is_alive_with_or_without_its_start_time():
    me = os.getpid()
    assert start_time(me) and start_time(me).isdigit()
    assert pid_alive(me) and pid_alive(me, start_time(me))


def test_a_reused_pid_is_not_the_process_that_had_it():
    """Another start time than the one recorded: the pid now names a later process."""
    assert pid_alive(os.getpid(), str(int(start_time(os.getpid())) + 1)) is False


def test_a_waited_child_is_gone_and_an_unwaited_one_is_a_zombie_not_alive():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert pid_alive(proc.pid, start_time(proc.pid))
        proc.kill()
        deadline = time.monotonic() + 10
        while _state(proc.pid) != "Z":  # exited, not yet waited for (Popen only reaps in wait/poll)
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert pid_alive(proc.pid) is False
    finally:
        proc.kill()
        proc.wait()
    assert pid_alive(proc.pid) is False and start_time(proc.pid) is None


@pytest.mark.parametrize("pid", [None, 0, -1])
def test_no_pid_is_no_process(pid):
    """0 and negative pids name process groups to kill(): never taken for a process."""
    assert pid_alive(pid) is False


def test_a_process_of_another_user_counts_as_alive():
    """pid 1 always runs; unless this is root (or pid 1 is this user's), kill(1, 0) is refused, which still
    means the process exists."""
    assert pid_alive(1) and pid_alive(1, start_time(1))
