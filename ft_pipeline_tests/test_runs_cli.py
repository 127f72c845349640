"""The accidents of issue 12 item 1, with the real CLI on an isolated home: SIGKILL mid-training and run again
(resumes from the checkpoint, registers), SIGTERM or a terminal's Ctrl-C mid-training (stops within seconds with
one line, slot freed, checkpoint kept), Ctrl-C while waiting for the `gpu` slot (exits within seconds, leaves
nothing behind), and two runs started at once on one home (both end well, one registered version)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import isolated_env, smoke_preset

pytestmark = pytest.mark.slow

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
# smoke without DPO and with a small evaluation, for tests about what happens around a run, not in its stages
_LIGHT = {"preference_adapter": {"enabled": False},
          "evaluation_report": {"max_examples": 4, "max_new_tokens": 16, "retention_prompts": 2}}


def _start(env, log: Path, preset=SMOKE, own_group=False):
    # own_group: a process group of its own, as a shell gives a foreground job, which a terminal's Ctrl-C reaches
    # whole (and this test's killpg does not reach pytest)
    return subprocess.Popen([sys.executable, "-m", "ft_pipeline.cli", "run", "--preset", str(preset)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                            process_group=0 if own_group else None)


def _until(pred, what, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := pred():
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _instance(tmp):
    return dg.DagsterInstance.from_config(str(tmp / "home" / "dagster"))


def _registered_versions(tmp) -> int:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'home' / 'mlflow' / 'mlflow.db'}")
    return len(client.search_model_versions("name='ft-pipeline-adapter'"))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sigkill_mid_training_then_run_again_resumes_from_the_checkpoint_and_registers(tmp_path):
    env = isolated_env(tmp_path)
    # killed after the checkpoint of step 4 (polled every 0.5 s), with 20 steps (~10 s) still to go; no DPO and a
    # small evaluation: the resumed SFT stage and the registration after it are the point
    preset = smoke_preset(tmp_path / "long.yaml", lora_adapter={"max_steps": 24, "save_steps": 4}, **_LIGHT)
    proc = _start(env, tmp_path / "first.log", preset)
    ckpts = tmp_path / "home" / "checkpoints"
    _until(lambda: list(ckpts.glob("*/checkpoint-*/trainer_state.json")), "a training checkpoint", timeout=900)
    proc.kill()  # what an OOM kill, a reboot or a closed laptop does
    proc.wait()
    stale = [r for r in _instance(tmp_path).get_runs() if r.status == dg.DagsterRunStatus.STARTED]
    assert len(stale) == 1 and stale[0].job_name == "train_and_register"

    second = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--preset", str(preset)], env=env,
                            capture_output=True, text=True, timeout=1800)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert f"stale run: run {stale[0].run_id} (train_and_register, STARTED): its process" in out
    assert "registered: ft-pipeline-adapter version 1" in out
    inst = _instance(tmp_path)
    assert inst.get_run_by_id(stale[0].run_id).status == dg.DagsterRunStatus.FAILURE
    mat = inst.get_latest_materialization_event(dg.AssetKey("lora_adapter")).asset_materialization
    assert "checkpoint-" in mat.metadata["resumed_from"].value
    assert _registered_versions(tmp_path) == 1


@pytest.mark.parametrize("how", ["sigterm", "ctrl_c"])
def test_sigterm_or_ctrl_c_mid_training_stops_within_seconds_frees_the_slot_and_keeps_the_checkpoint(tmp_path, how):
    env = isolated_env(tmp_path)
    preset = smoke_preset(tmp_path / "long.yaml", lora_adapter={"max_steps": 400, "save_steps": 2})
    log = tmp_path / "run.log"
    proc = _start(env, log, preset, own_group=how == "ctrl_c")
    ckpts = tmp_path / "home" / "checkpoints"
    _until(lambda: list(ckpts.glob("*/checkpoint-*/trainer_state.json")), "a training checkpoint", timeout=900)
    t0 = time.monotonic()
    if how == "sigterm":
        proc.terminate()  # what `kill`, systemd or a container runtime sends first
    else:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: SIGINT to every process of the foreground job
    proc.wait(timeout=60)
    took = time.monotonic() - t0
    print(f"exit {took:.2f} s after {how}")
    out = log.read_text()
    assert proc.returncode == 130 and took < 10, out[-3000:]
    assert "interrupted: the run is marked failed" in out
    # the one line, not the tracebacks of helper processes that got the same SIGINT
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    training = _instance(tmp_path).get_runs()[0]  # the newest: the split ran in a run of its own before it
    assert training.job_name == "train_and_register" and training.status == dg.DagsterRunStatus.FAILURE
    assert not [r for r in _instance(tmp_path).get_runs() if not r.is_finished]
    assert _instance(tmp_path).event_log_storage.get_concurrency_info("gpu").claimed_slots == []
    assert list(ckpts.glob("*/checkpoint-*/trainer_state.json"))  # the next run resumes from it (test above)


def test_ctrl_c_while_waiting_for_the_gpu_slot_exits_within_seconds(tmp_path):
    env = isolated_env(tmp_path)
    subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "env"], env=env, check=True, capture_output=True)
    inst = _instance(tmp_path)
    storage = inst.event_log_storage
    storage.initialize_concurrency_limit_to_default("gpu")
    assert storage.claim_concurrency_slot("gpu", "someone-else", "lora_adapter").is_claimed
    log = tmp_path / "run.log"
    proc = _start(env, log)
    _until(lambda: "waits for a slot in pool 'gpu', held by run someone-else" in log.read_text(), "the slot wait")
    cpu0 = _cpu_s(proc.pid)
    time.sleep(5)
    cpu = _cpu_s(proc.pid) - cpu0
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    took = time.monotonic() - t0
    print(f"slot wait: {cpu:.2f} s CPU in 5 s; exit {took:.2f} s after SIGINT")
    assert proc.returncode == 130 and took < 10, log.read_text()[-3000:]
    assert cpu < 1.0
    assert "interrupted: the run is marked failed" in log.read_text()
    info = storage.get_concurrency_info("gpu")
    assert [s.run_id for s in info.claimed_slots] == ["someone-else"]
    assert {p.run_id for p in info.pending_steps} == {"someone-else"}  # its queued claim is gone


def test_runs_started_at_once_on_a_fresh_home_each_set_up_dagster_without_a_traceback(tmp_path):
    # Dagster's SQLite run storage creates its tables unguarded: processes that open a fresh home together
    # failed with "table secondary_indexes already exists" or left alembic_version with two heads for good
    (tmp_path / "raw").mkdir()
    env = isolated_env(tmp_path, tmp_path / "raw")
    procs = [subprocess.Popen([sys.executable, "-m", "ft_pipeline.cli", "run", "--preset", str(SMOKE)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for out in outs:  # nothing to train on: each run says so in one line, none crashes
        assert "Traceback" not in out and "not registered: train_holdout_split: no cleaned drop to split" in out, out
    assert len(_instance(tmp_path).get_runs()) > 0


def test_two_runs_started_at_once_on_one_home_both_end_well_with_one_registration(tmp_path):
    env = isolated_env(tmp_path)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    preset = smoke_preset(tmp_path / "light.yaml", **_LIGHT)  # the home's lock is the point, not what runs under it
    procs = [_start(env, log, preset) for log in logs]
    for p in procs:
        p.wait(timeout=1800)
    outs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outs]
    waited = [o for o in outs if "waiting: another ft-pipeline run holds" in o]
    assert len(waited) == 1 and "nothing to do" in waited[0]
    assert sum("registered: ft-pipeline-adapter version 1" in o for o in outs) == 1
    assert _registered_versions(tmp_path) == 1
