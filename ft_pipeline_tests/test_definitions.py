"""The Definitions load, and the asset graph (keys, deps, groups, checks) matches this snapshot: a rename or a
rewired dependency shows up here in review. The default task's graph is GRAPH; the second demo task of tasks.yaml,
routing, has the same graph but the traffic assets, under the key prefix routing/ and in the group routing."""

import subprocess
import sys

import dagster as dg

from ft_pipeline.definitions import defs

GRAPH = {
    "raw_examples": ("data", []),
    "cleaned_examples": ("data", ["raw_examples"]),
    "train_set": ("data", ["base_model", "cleaned_examples"]),
    "holdout_set": ("data", ["base_model", "cleaned_examples"]),
    "base_model": ("model", []),
    "lora_adapter": ("model", ["base_model", "holdout_set", "train_set"]),
    "preference_pairs": ("data", []),
    "preference_adapter": ("model", ["base_model", "lora_adapter", "preference_pairs"]),
    "evaluation_report": ("evaluation", ["holdout_set", "lora_adapter", "preference_adapter"]),
    "registered_model": ("registry", ["evaluation_report"]),
    "merged_model": ("registry", ["registered_model"]),
    "gguf_model": ("registry", ["registered_model"]),
    "reviewed_traffic": ("traffic", []),
    "traffic_drift": ("traffic", ["evaluation_report", "train_set"]),
}
CHECKS = {("cleaned_examples", "rows_accounted_for"), ("evaluation_report", "beats_base_and_champion"),
          ("train_set", "no_near_duplicate_across_split"), ("holdout_set", "no_near_duplicate_across_split"),
          ("preference_pairs", "pairs_accounted_for"), ("cleaned_examples", "no_label_conflicts"),
          ("train_set", "no_label_conflicts"), ("traffic_drift", "traffic_within_drift_thresholds")}
TASK_GRAPH = {f"routing/{k}": ("routing", [f"routing/{p}" for p in parents])
              for k, (_, parents) in GRAPH.items() if k not in ("reviewed_traffic", "traffic_drift")}
TASK_CHECKS = {(f"routing/{k}", name) for k, name in CHECKS if k != "traffic_drift"}
# checks that warn and block nothing: a label conflict is reported, not fatal; so is drift
WARNINGS = {"no_label_conflicts", "traffic_within_drift_thresholds"}


def test_asset_graph_snapshot():
    graph = defs.resolve_asset_graph()
    got = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        got[key.to_user_string()] = (node.group_name, sorted(k.to_user_string() for k in node.parent_keys))
    assert got == GRAPH | TASK_GRAPH
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == CHECKS | TASK_CHECKS
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, f"{key} needs a docstring: it is what the UI shows"
        assert node.code_version, f"{key} needs a code_version"


def test_blocking_checks_and_gpu_pool():
    graph = defs.resolve_asset_graph()
    for prefix in ([], ["routing"]):  # one pool for every task's training: one training at a time
        assert graph.get(dg.AssetKey([*prefix, "lora_adapter"])).pools == {"gpu"}
        assert graph.get(dg.AssetKey([*prefix, "preference_adapter"])).pools == {"gpu"}
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking == (key.name not in WARNINGS), key


def test_jobs_and_sensors_resolve_and_run_by_default():
    assert defs.resolve_job_def("ingest_drop").partitions_def.name == "drops"
    assert defs.resolve_job_def("train_and_register")
    assert (defs.resolve_job_def("ingest_preferences").asset_layer.selected_asset_keys
            == {dg.AssetKey("preference_pairs")})
    for name in ("raw_drops_sensor", "ft_pipeline_automation", "drift_reevaluation_sensor"):
        assert defs.resolve_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING, name


def test_automation_policy():
    graph = defs.resolve_asset_graph()
    automated = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition}
    # Ingestion (of drops and of preference drops) is the raw-drop sensor's job; everything after it follows.
    # The traffic assets are the daily schedule's (traffic_daily_schedule).
    manual = {"raw_examples", "cleaned_examples", "preference_pairs"}
    assert automated == (set(GRAPH) - manual - {"reviewed_traffic", "traffic_drift"}
                         | {k for k in TASK_GRAPH if k.split("/")[1] not in manual})
    for key in ("lora_adapter", "routing/lora_adapter"):
        assert "on 0 3 * * 1" in graph.get(dg.AssetKey.from_user_string(key)).automation_condition.get_label()


def test_retrain_cron_is_configurable(monkeypatch):
    from ft_pipeline.defs import automation

    monkeypatch.setenv("FT_PIPELINE_RETRAIN_CRON", "0 2 * * *")
    assert automation.conditions()["lora_adapter"].get_label().startswith("on 0 2 * * *")


def test_code_location_loads_without_heavy_imports():
    code = ("import sys, ft_pipeline.definitions as d; d.defs.get_repository_def();"
            "print(sorted(m for m in ('torch','transformers','trl','peft','mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ui_and_daemon_runs_fork_their_steps_from_a_server_that_imported_torch_once():
    for job in ("ingest_drop", "ingest_preferences", "train_and_register"):
        ex = defs.resolve_job_def(job).executor_def
        cfg = ex.config_schema.resolve_config({}).value["config"]
        assert ex.name == "multiprocess" and set(cfg["start_method"]) == {"forkserver"}, (job, cfg)
        assert ({"ft_pipeline.definitions", "torch", "transformers"}
                <= set(cfg["start_method"]["forkserver"]["preload_modules"]))
