"""Tasks (tasks.yaml, docs/tasks.md): two tasks in one Definitions and one Dagster instance, each reading its own
drops and writing its own files, registering under its own name; bad task names and tasks files as one line."""

import json
import shutil
import subprocess
import sys

import dagster as dg
import pytest

from ft_pipeline import tasks
from ft_pipeline.definitions import defs
from ft_pipeline.resources import MlflowTracking, PipelineHome
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import isolated_env

ROUTING_DROP = "2026-05-routing_chat.jsonl"


def test_the_repo_ships_two_tasks_and_the_default_keeps_its_model_name():
    known = tasks.all_tasks()
    assert list(known) == ["default", "routing"]
    assert known["default"].model_name == "ft-pipeline-adapter" and known["default"].key_prefix == []
    assert known["routing"].model_name == "routing" and known["routing"].key_prefix == ["routing"]
    assert known["routing"].preset_path() == REPO_ROOT / "configs" / "cpu_smollm2_routing.yaml"
    assert (REPO_ROOT / "data" / "raw" / "routing" / ROUTING_DROP).is_file()


def test_each_task_has_its_own_jobs_partitions_and_sensor_in_one_definitions():
    assert defs.resolve_job_def("ingest_drop").partitions_def.name == "drops"
    assert defs.resolve_job_def("routing__ingest_drop").partitions_def.name == "drops_routing"
    train = defs.resolve_job_def("routing__train_and_register").asset_layer.selected_asset_keys
    assert train and all(k.path[0] == "routing" for k in train)
    assert dg.AssetKey("lora_adapter") not in train
    for name in ("raw_drops_sensor", "routing__raw_drops_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING
    # one automation sensor over every task's assets
    auto = defs.resolve_sensor_def("ft_pipeline_automation")
    resolved = auto.asset_selection.resolve(defs.resolve_asset_graph())
    assert {dg.AssetKey("lora_adapter"), dg.AssetKey(["routing", "lora_adapter"])} <= resolved


def test_a_task_sees_its_own_raw_folder_files_and_registered_model(tmp_path):
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    routing = home.for_task("routing")
    assert routing.raw_dir == str(tmp_path / "raw" / "routing")
    assert routing.data("cleaned", "x") == tmp_path / "home" / "tasks" / "routing" / "data" / "cleaned" / "x.jsonl"
    assert routing.adapter_dir == tmp_path / "home" / "tasks" / "routing" / "models" / "adapter"
    assert routing.root == home.root  # what tasks share: the gpu pool's lock, erasure requests, traffic
    assert routing.base_models_dir == home.base_models_dir == tmp_path / "home" / "models" / "base"
    assert routing.for_task("default").raw_dir == home.raw_dir and home.for_task("default") is home
    tracking = MlflowTracking(tracking_uri="sqlite:///x.db", artifact_root="a")
    assert tracking.for_task("routing").registered_model_name == "routing"
    assert tracking.for_task("default").registered_model_name == "ft-pipeline-adapter"


def test_the_second_tasks_drops_are_ingested_into_its_own_paths_only(tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(REPO_ROOT / "data" / "raw", raw)
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw))
    resources = {"home": home, "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                                                 artifact_root=str(tmp_path / "artifacts"))}
    with dg.instance_for_test() as inst:
        # the routing task's sensor registers and ingests its folder's drop, in its own partitions
        tick = defs.resolve_sensor_def("routing__raw_drops_sensor")(
            dg.build_sensor_context(instance=inst, resources={"home": home}))
        assert [r.partition_key for r in tick.run_requests] == [ROUTING_DROP]
        assert {r.job_name for r in tick.run_requests} == {"routing__ingest_drop"}
        assert tick.dynamic_partitions_requests[0].partitions_def_name == "drops_routing"
        inst.add_dynamic_partitions("drops_routing", [ROUTING_DROP])
        job = defs.resolve_job_def("routing__ingest_drop")
        assert job.execute_in_process(partition_key=ROUTING_DROP, instance=inst, resources=resources).success
        # the default task's sensor sees the three flat drops, never the routing folder's
        default_tick = defs.resolve_sensor_def("raw_drops_sensor")(
            dg.build_sensor_context(instance=inst, resources={"home": home}))
        assert ROUTING_DROP not in {r.partition_key for r in default_tick.run_requests}
        assert inst.get_dynamic_partitions("drops") == []
        mat = inst.get_latest_materialization_event(dg.AssetKey(["routing", "cleaned_examples"]))
        assert mat.asset_materialization.partition == ROUTING_DROP
        assert inst.get_latest_materialization_event(dg.AssetKey("cleaned_examples")) is None
    task_data = tmp_path / "home" / "tasks" / "routing" / "data"
    stats = json.loads((task_data / "cleaned" / f"{ROUTING_DROP}.stats.json").read_text())
    assert (stats["rows_in"], stats["kept"], stats["duplicates"]) == (249, 234, 12)  # 6 exact and 6 near-duplicates
    assert not (tmp_path / "home" / "data").exists()  # nothing in the default task's files


@pytest.mark.parametrize("name, says", [
    ("Routing!", "task name 'Routing!' is not a slug"),
    ("preferences", "task name 'preferences' is reserved"),
    ("nope", "unknown task 'nope'"),
])
def test_run_with_a_bad_task_name_says_so_in_one_line(tmp_path, name, says):
    out = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--task", name],
                         env=isolated_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "home").exists()


@pytest.mark.parametrize("text, says", [
    ("tasks:\n  Bad Name: {}\n", "is not a slug"),
    ("tasks:\n  a: {preset: x, colour: red}\n", "not ['colour']"),
    ("tasks:\n  a-b: {}\n  a_b: {}\n", "the same Dagster name 'a_b'"),
    ("tasks:\n  a: {registered_model_name: ft-pipeline-adapter}\n", "register the same model name"),
    ("- a\n", "expected a mapping `tasks:`"),
    ("tasks:\n  default: {registered_model_name: mine}\n", "the default task registers ft-pipeline-adapter"),
])
def test_a_bad_tasks_file_is_one_line(tmp_path, monkeypatch, text, says):
    (tmp_path / "tasks.yaml").write_text(text)
    monkeypatch.setenv(tasks.TASKS_ENV, str(tmp_path / "tasks.yaml"))
    with pytest.raises(tasks.TaskError, match="") as e:
        tasks.all_tasks()
    assert says in str(e.value) and "\n" not in str(e.value)


def test_the_routing_generator_rewrites_the_committed_drop_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, "-B", str(REPO_ROOT / "data" / "generate_routing.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    committed = REPO_ROOT / "data" / "raw" / "routing"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in committed.iterdir()) == [ROUTING_DROP]
    assert (tmp_path / ROUTING_DROP).read_bytes() == (committed / ROUTING_DROP).read_bytes()


def test_a_fine_tuning_jobs_task_is_a_task_beside_the_repos(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_PIPELINE_HOME", str(tmp_path / "home"))
    preset = tmp_path / "ftjob-1.yaml"
    tasks.add_job_task(tasks.Task("support", preset=str(preset), description="fine-tuning job ftjob-1"))
    assert list(tasks.all_tasks()) == ["default", "routing", "support"]
    support = tasks.get("support")
    assert support.model_name == "support" and support.key_prefix == ["support"] and support.preset_path() == preset
    assert support.home(tmp_path / "home") == tmp_path / "home" / "tasks" / "support"
    assert list(tasks.repo_tasks()) == ["default", "routing"]
    for name in ("routing", "default"):
        with pytest.raises(tasks.TaskError, match="is a task of"):
            tasks.add_job_task(tasks.Task(name))
    # a jobs' tasks file naming a task of tasks.yaml (written by hand) is one line, not a second routing
    tasks.jobs_tasks_file().write_text("tasks:\n  routing: {}\n")
    with pytest.raises(tasks.TaskError, match="is also a task of") as e:
        tasks.all_tasks()
    assert "\n" not in str(e.value)
