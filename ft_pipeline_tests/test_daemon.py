"""The daemon path a person uses from the UI, on a real instance with the repo's dagster.yaml: a backfill over
every drop partition, and training runs launched at the same time that never train at once (the run queue's
`ft_pipeline/gpu` tag limit for queued runs; for runs that bypass the queue, the `gpu` pool and the home's gpu
lock that its steps take) and leave the MLflow store whole."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from ft_pipeline.data.drop_files import find_drops
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import demo_drops, isolated_env, smoke_preset

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _wait(pred, what, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)  # a run ends between two polls: at 2 s a wait overran it by 1 s on average
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    env = isolated_env(tmp, demo_drops(tmp))
    # `ft-pipeline env` copies the repo's dagster.yaml into $FT_PIPELINE_HOME/dagster, as `make ui` does.
    subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "env"], env=env, check=True, capture_output=True)
    env["DAGSTER_HOME"] = str(tmp / "home" / "dagster")
    # The sensors are on by default; this module is about backfills and concurrency (test_orchestration covers
    # the automation), so runs here are only the ones the tests launch.
    for sensor in ("raw_drops_sensor", "routing__raw_drops_sensor", "ft_pipeline_automation"):
        subprocess.run([str(BIN / "dagster"), "sensor", "stop", sensor, "-w", "workspace.yaml"], cwd=REPO_ROOT,
                       env=env, check=True, capture_output=True)
    log = (tmp / "daemon.log").open("w")
    proc = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=REPO_ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    inst = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        yield tmp, env, inst
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _dagster(env, *args):
    return subprocess.run([str(BIN / "dagster"), *args, "-w", "workspace.yaml"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _done(inst, run_ids):
    runs = [inst.get_run_by_id(r) for r in run_ids]
    return all(r.is_finished for r in runs)


def test_one_backfill_recleans_every_drop(daemon):
    tmp, env, inst = daemon
    drops = sorted(find_drops(tmp / "raw")[0])
    inst.add_dynamic_partitions("drops", drops)
    out = _dagster(env, "job", "backfill", "-j", "ingest_drop", "--all", "true", "--noprompt")
    assert out.returncode == 0 and "Launched backfill job" in out.stdout, out.stdout + out.stderr
    backfill_id = out.stdout.split("Launched backfill job `")[1].split("`")[0]
    _wait(lambda: len(inst.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))) == len(drops)
          and _done(inst, [r.run_id for r in inst.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))]),
          "the backfill's runs")
    runs = inst.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert sorted(r.tags["dagster/partition"] for r in runs) == drops
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    for drop in drops:
        rec = inst.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("cleaned_examples"), asset_partitions=[drop]), limit=1).records
        assert rec and rec[0].run_id in {r.run_id for r in runs}


def _training_spans(db: Path):
    """(start, end, Dagster run id) of every lora_adapter training, from the MLflow runs that recorded them."""
    with sqlite3.connect(db) as con:
        return sorted(con.execute(
            "SELECT r.start_time, r.end_time, d.value FROM runs r "
            "JOIN tags a ON a.run_uuid = r.run_uuid AND a.key = 'dagster.asset_key' AND a.value = 'lora_adapter' "
            "JOIN tags d ON d.run_uuid = r.run_uuid AND d.key = 'dagster.run_id'").fetchall())


def test_training_runs_launched_at_once_never_train_together(daemon):
    tmp, env, inst = daemon
    # Two queued runs of the training job at the same moment (what two clicks in the UI do) ...
    # smoke without DPO and with a small evaluation: the queue is the point, and a daemon-launched run starts a
    # process per step
    queued_cfg = smoke_preset(tmp / "queued.yaml", preference_adapter={"enabled": False},
                              evaluation_report={"max_examples": 4, "max_new_tokens": 16, "retention_prompts": 2})
    launches = [subprocess.Popen([str(BIN / "dagster"), "job", "launch", "-j", "train_and_register",
                                  "-c", str(queued_cfg),
                                  "-w", "workspace.yaml"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for p in launches:
        assert p.wait(timeout=300) == 0, p.stdout.read()
    queued = [r.run_id for r in inst.get_runs(dg.RunsFilter(job_name="train_and_register"))]
    assert len(queued) == 2
    _wait(lambda: _done(inst, queued), "the two training runs")
    # ... and two runs that bypass the queue and its tag limit, training at once; only the gpu pool holds them.
    lora_only = tmp / "lora.yaml"
    lora_only.write_text("ops:\n  lora_adapter:\n    config:\n      max_steps: 10\n"
                         "      per_device_train_batch_size: 8\n")
    direct = [subprocess.Popen([str(BIN / "dagster"), "asset", "materialize", "--select", "lora_adapter",
                                "-m", "ft_pipeline.definitions", "-c", str(lora_only)], cwd=REPO_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for p in direct:
        assert p.wait(timeout=900) == 0, p.stdout.read()[-3000:]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in inst.get_runs()), \
        [(r.job_name, r.status) for r in inst.get_runs()]
    # Trainings, not steps: on SQLite, Dagster's pool can let two steps through at once (runs.pool_lock), and the
    # second then waits inside its step for the home's gpu lock.
    db = tmp / "home" / "mlflow" / "mlflow.db"
    spans = _training_spans(db)
    assert len({run for *_, run in spans}) == len(spans) == 4, spans
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        assert start >= end, f"runs {a} and {b} trained at the same time"
    # The MLflow store took every run and is intact.
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        statuses = dict(con.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
        versions = con.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    assert set(statuses) == {"FINISHED"}, statuses
    assert versions == 2  # one per queued train_and_register run; the direct runs only trained
