"""Retraining only when needed, on a real instance after a real (smoke) run of the whole graph: the main job's
second run launches nothing, and the declarative automation asks for a new split only when a cleaned drop's
content changes and for training only on the retrain cron after its inputs changed."""

import datetime as dt
import json
import subprocess
import sys

import dagster as dg
import pytest

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import smoke_preset

pytestmark = pytest.mark.slow

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"
MONDAY_NOON = dt.datetime(2026, 11, 23, 12, tzinfo=dt.timezone.utc)  # the default cron ticks Mondays 03:00


def run_cli(env, *args):
    proc = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", *args], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def world(smoke_home):
    tmp, env, first = smoke_home()  # a smoke run on a copy of the demo drops, in a folder of this module's own
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return tmp, env, first.stdout


def _defs_and_instance(tmp):
    from ft_pipeline.definitions import defs
    from ft_pipeline.resources import MlflowTracking, PipelineHome

    home = tmp / "home"
    scoped = dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, sensors=defs.sensors,
        resources={"home": PipelineHome(home=str(home), raw_dir=str(tmp / "raw")),
                   "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
                                                     artifact_root=str(home / "mlflow" / "artifacts"))})
    return scoped, dg.DagsterInstance.from_config(str(home / "dagster"))


def _count(inst, key):
    return len(inst.fetch_materializations(dg.AssetKey(key), limit=100).records)


def _requested(result):
    """The default task's assets requested (the routing task's graph, never run here, asks for its base model)."""
    return sorted(r.key.to_user_string() for r in result.results if r.true_subset.size and len(r.key.path) == 1)


def test_second_run_with_nothing_changed_launches_no_training(world):
    tmp, env, first = world
    assert "registered: ft-pipeline-adapter version 1" in first
    _, inst = _defs_and_instance(tmp)
    runs_before = len(inst.get_runs())
    second = run_cli(env, "run", "--preset", str(SMOKE))
    assert "nothing to do: every asset of train_and_register is up to date" in second
    assert "to ingest" not in second
    assert len(inst.get_runs()) == runs_before  # not even an ingest run
    assert _count(inst, "lora_adapter") == 1 and _count(inst, "registered_model") == 1


def test_a_code_version_bump_makes_the_stage_and_its_downstream_stale(world):
    from ft_pipeline.cli.staleness import train_selection

    tmp, _, _ = world
    defs, inst = _defs_and_instance(tmp)
    bumped = dg.Definitions(
        assets=dg.map_asset_specs(
            lambda s: s.replace_attributes(code_version="eval-v999") if s.key.path == ["evaluation_report"] else s,
            defs.assets),
        asset_checks=defs.asset_checks, jobs=defs.jobs, resources=defs.resources)
    import yaml

    todo = train_selection(inst, bumped, "train_and_register", yaml.safe_load(SMOKE.read_text())["ops"])
    assert "code version" in todo["evaluation_report"]
    assert set(todo) == {"evaluation_report", "registered_model", "merged_model", "gguf_model"}


def test_same_content_retrains_nothing_and_changed_config_retrains(world):
    tmp, env, _ = world
    _, inst = _defs_and_instance(tmp)
    drop = tmp / "raw" / "2026-01-support_chat.jsonl"
    with drop.open("a") as f:  # an exact duplicate row: the file changes, the cleaned content does not
        f.write(drop.read_text().splitlines()[0] + "\n")
    out = run_cli(env, "run", "--preset", str(SMOKE))
    assert "to ingest: 2026-01-support_chat.jsonl (file content changed)" in out
    assert "nothing to do" in out and _count(inst, "lora_adapter") == 1
    # Another training config is a different model: it trains (and only the model side re-runs).
    preset = smoke_preset(tmp / "smoke-11.yaml", lora_adapter={"max_steps": 11})
    out = run_cli(env, "run", "--preset", str(preset))
    assert "lora_adapter: run config changed" in out and "train_set" not in out.split("to materialize:")[1]
    assert _count(inst, "lora_adapter") == 2


def test_automation_resplits_on_new_content_and_retrains_only_on_the_cron_tick(world):
    tmp, _, _ = world
    defs, inst = _defs_and_instance(tmp)
    result = dg.evaluate_automation_conditions(defs, inst, evaluation_time=MONDAY_NOON)
    assert _requested(result) == []
    # A week later the cron has ticked, but no input changed since the last training: nothing.
    result = dg.evaluate_automation_conditions(defs, inst, evaluation_time=MONDAY_NOON + dt.timedelta(days=7),
                                               cursor=result.cursor)
    assert _requested(result) == []
    # New data lands (what the raw-drop sensor launches): the split follows at once, training does not.
    new = tmp / "raw" / "2026-05-extra.jsonl"
    new.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Where is order {i * 7919}? It was a blue kettle."},
        {"role": "assistant", "content": json.dumps({"intent": "order_status", "order_id": str(i * 7919)})}]}) + "\n"
        for i in range(30)))
    inst.add_dynamic_partitions("drops", [new.name])
    assert defs.resolve_job_def("ingest_drop").execute_in_process(instance=inst, partition_key=new.name).success
    t = MONDAY_NOON + dt.timedelta(days=7, hours=1)
    result = dg.evaluate_automation_conditions(defs, inst, evaluation_time=t, cursor=result.cursor)
    assert _requested(result) == ["holdout_set", "train_set"]
    job = defs.resolve_job_def("train_and_register")
    split = job.get_subset(asset_selection={dg.AssetKey("train_set"), dg.AssetKey("holdout_set")})
    assert split.execute_in_process(instance=inst).success
    result = dg.evaluate_automation_conditions(defs, inst, evaluation_time=t + dt.timedelta(hours=1),
                                               cursor=result.cursor)
    assert _requested(result) == []  # the train set changed, but the retrain cron has not ticked yet
    result = dg.evaluate_automation_conditions(defs, inst, evaluation_time=MONDAY_NOON + dt.timedelta(days=14),
                                               cursor=result.cursor)
    assert _requested(result) == ["evaluation_report", "gguf_model", "lora_adapter", "merged_model",
                                  "preference_adapter", "registered_model"]
