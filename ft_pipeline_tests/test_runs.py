"""A killed `ft-pipeline run` never blocks the next one: stale runs of dead processes are marked failed and their
`gpu` slot freed, a step waiting for a slot says who holds it without using the CPU, and Ctrl-C stops a wait."""

import shutil
import socket
import subprocess
import threading
import time

import dagster as dg
import pytest

from ft_pipeline.model.training import last_complete_checkpoint
from ft_pipeline.runs import control as runs
from ft_pipeline.settings import REPO_ROOT


@pytest.fixture
def instance(tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as inst:
        inst.event_log_storage.initialize_concurrency_limit_to_default("gpu")
        yield inst


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@dg.asset(pool="gpu")
def _trained():
    return 1


def _started_run(inst, tags: dict) -> str:
    job = dg.define_asset_job("train", selection=[_trained]).resolve(asset_graph=dg.Definitions(
        assets=[_trained]).resolve_asset_graph())
    run = inst.create_run_for_job(job_def=job, tags=tags)
    inst.report_dagster_event(dg.DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name),
                              run_id=run.run_id)
    assert inst.event_log_storage.claim_concurrency_slot("gpu", run.run_id, "_trained").is_claimed
    return run.run_id


def test_a_run_whose_process_is_gone_is_marked_failed_and_frees_its_slot(instance, tmp_path):
    host = socket.gethostname()
    dead = _started_run(instance, {runs.HOST: host, runs.PID: str(_dead_pid())})
    lines = runs.reap(instance, tmp_path)
    assert len(lines) == 1 and dead in lines[0] and "gone; marked failed" in lines[0]
    assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []


@pytest.mark.parametrize("tags", [
    {runs.HOST: socket.gethostname(), runs.PID: "self"},  # still running: this very process
    {runs.HOST: "another-host", runs.PID: "1"},  # elsewhere: its process cannot be checked from here
    {},  # launched from the UI (the daemon watches those)
])
def test_a_live_or_unknown_run_is_left_alone(instance, tmp_path, tags):
    import os

    tags = {k: (str(os.getpid()) if v == "self" else v) for k, v in tags.items()}
    run_id = _started_run(instance, tags)
    assert runs.reap(instance, tmp_path) == []
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    assert len(instance.event_log_storage.get_concurrency_info("gpu").claimed_slots) == 1


def test_a_reused_pid_is_not_the_old_process():
    import os

    assert runs.process_alive(runs.owner_tags()) is True
    assert runs.process_alive({**runs.owner_tags(), runs.PID_START: "1"}) is False
    assert runs.process_alive({runs.HOST: socket.gethostname(), runs.PID: str(_dead_pid())}) is False
    assert runs.process_alive({runs.PID: str(os.getpid())}) is None


def test_a_step_waiting_for_a_slot_names_the_holder_and_sleeps(instance, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "POLL_S", 0.2)
    holder = _started_run(instance, runs.owner_tags())
    said, done = [], threading.Event()
    waiter = threading.Thread(target=lambda: (runs._wait_for_slot(instance, "gpu", "waiting-run", "_trained",
                                                                  said.append), done.set()))
    cpu0 = time.process_time()
    waiter.start()
    time.sleep(3)
    cpu = time.process_time() - cpu0
    assert not done.is_set()
    assert len(said) == 1 and f"held by run {holder}" in said[0] and "started 20" in said[0] and "alive" in said[0]
    assert cpu < 1.0, f"{cpu:.2f} s of CPU in 3 s of waiting"  # dagster's own in-process wait spins a core
    instance.event_log_storage.free_concurrency_slots_for_run(holder)
    assert done.wait(5)
    assert [s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots] == ["waiting-run"]


def test_a_claim_of_a_killed_waiter_is_freed(instance, tmp_path):
    # A process killed while it waited (or before its run started) leaves a claim with no run behind.
    storage = instance.event_log_storage
    marker = runs._claims_dir(tmp_path) / "never-started.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(f'{{"{runs.HOST}": "{socket.gethostname()}", "{runs.PID}": "{_dead_pid()}"}}')
    assert storage.claim_concurrency_slot("gpu", "never-started", "_trained").is_claimed
    runs.reap(instance, tmp_path)
    assert storage.get_concurrency_info("gpu").claimed_slots == [] and not marker.exists()


def test_resume_skips_a_checkpoint_a_kill_left_half_written(tmp_path):
    for step, complete in ((5, True), (10, True), (15, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert not (tmp_path / "checkpoint-15").exists()
    assert last_complete_checkpoint(tmp_path / "checkpoint-5") is None


@dg.asset(pool="gpu", deps=[_trained])
def _tuned_further():
    return 2


def test_two_steps_of_one_pool_in_one_run_do_not_wait_on_each_other(instance, tmp_path):
    """lora_adapter and preference_adapter share pool `gpu` (limit 1): the run claims the first step's slot, and
    the second takes it when the first finishes. Claiming both up front would wait on this run itself forever."""
    job = dg.define_asset_job("train2", selection=[_trained, _tuned_further]).resolve(
        asset_graph=dg.Definitions(assets=[_trained, _tuned_further]).resolve_asset_graph())
    done = []
    worker = threading.Thread(target=lambda: done.append(runs.execute(job, instance, tmp_path, log=lambda m: None)),
                              daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "the run waited on its own slot"
    assert done[0].success and done[0].output_for_node("_tuned_further") == 2
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == []


def test_a_step_of_a_pool_waits_for_the_step_holding_its_lock_and_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "POLL_S", 0.05)
    said, order = [], []
    with runs.pool_lock(tmp_path, "gpu", "lora_adapter", "run-a", log=said.append):
        def take_it():
            with runs.pool_lock(tmp_path, "gpu", "preference_adapter", "run-b", log=said.append):
                order.append("b holds")

        waiter = threading.Thread(target=take_it)
        waiter.start()
        time.sleep(1)
        assert not order
        order.append("a releases")
    waiter.join(5)
    assert order == ["a releases", "b holds"]
    assert len(said) == 1 and said[0].startswith("preference_adapter waits for pool 'gpu' on ")
    assert "held by run run-a (lora_adapter), pid " in said[0]
    # another pool, or another home, does not wait
    with runs.pool_lock(tmp_path / "other", "gpu", "lora_adapter", "run-c", log=said.append), \
            runs.pool_lock(tmp_path, "cpu", "x", "run-d", log=said.append):
        assert len(said) == 1


def test_the_steps_of_pool_gpu_take_its_lock(tmp_path, monkeypatch):
    """preference_adapter (its skip path: no training, nothing else to set up) waits while the home's gpu lock is
    held, as lora_adapter does: the same `home.pool_lock` wraps both steps."""
    import json

    from ft_pipeline.defs.preference import preference_adapter, preference_info
    from ft_pipeline.resources import MlflowTracking, PipelineHome

    monkeypatch.setattr(runs, "POLL_S", 0.05)
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    home.adapter_info.parent.mkdir(parents=True, exist_ok=True)
    home.adapter_info.write_text(json.dumps({"training_run_id": "r1"}))
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"))
    results = []
    run = threading.Thread(target=lambda: results.append(dg.materialize(
        [preference_adapter], resources={"home": home, "mlflow_tracking": tracking},
        run_config={"ops": {"preference_adapter": {"config": {"enabled": False}}}}).success))
    with runs.pool_lock(home.root, "gpu", "lora_adapter", "run-a", log=lambda m: None):
        run.start()
        time.sleep(3)
        assert not preference_info(home).exists() and not results
    run.join(60)
    assert results == [True] and json.loads(preference_info(home).read_text())["trained"] is False
