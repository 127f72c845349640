"""A task's preset configures every run of its assets, not only `ft-pipeline run --task` (docs/tasks.md, "Which
config a run uses"): a run with no config, as the automation launches them through Dagster's implicit asset job,
takes each field the run does not set from the task's preset; a run config wins field by field, under the op's
name in the task's job and under its suffixed name in the all-assets job; the default task keeps the config
classes' defaults (FT_PIPELINE_DEFAULTS, configs/cpu_tiny.yaml here); a task preset a step cannot use fails that
step in one line. On the real Dagster instance and MLflow store, cleaning the routing drop (its knobs show in the
cleaning stats, and it needs no model) and running the routing gate check on a written report."""

import json
import shutil

import dagster as dg
import pytest

from ft_pipeline import tasks
from ft_pipeline.definitions import defs
from ft_pipeline.defs.evaluation import GATE_CHECK
from ft_pipeline.resources import MlflowTracking, PipelineHome
from ft_pipeline.settings import REPO_ROOT

ROUTING_DROP = "2026-05-routing_chat.jsonl"
DEFAULT_DROP = "2026-03-tickets.csv"
ROUTING_INGEST = [dg.AssetKey(["routing", "raw_examples"]), dg.AssetKey(["routing", "cleaned_examples"])]
# What the routing preset of these tests sets, where the defaults preset (cpu_tiny.yaml) keeps the config classes'
# own defaults: conflicts keep, near_dup_threshold 0.8.
TASK_PRESET = {"conflicts": "quarantine", "near_dup_threshold": 0.9}


def _preset(path, op: str = "cleaned_examples", **config) -> str:
    path.write_text(json.dumps({"ops": {op: {"config": config}}}))  # JSON is YAML
    return str(path)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A tasks file giving routing (and the default task) a preset of their own, the routing drop and one default
    drop, a home and MLflow store under tmp_path, a Dagster instance with both drops registered."""
    monkeypatch.setenv("FT_PIPELINE_HOME", str(tmp_path / "home"))  # no fine-tuning jobs' tasks from elsewhere
    presets = {"routing": _preset(tmp_path / "routing.yaml", **TASK_PRESET),
               "default": _preset(tmp_path / "default.yaml", conflicts="latest")}
    (tmp_path / "tasks.yaml").write_text(json.dumps({"tasks": {n: {"preset": p} for n, p in presets.items()}}))
    monkeypatch.setenv(tasks.TASKS_ENV, str(tmp_path / "tasks.yaml"))
    raw = tmp_path / "raw"
    shutil.copytree(REPO_ROOT / "data" / "raw" / "routing", raw / "routing")
    shutil.copy(REPO_ROOT / "data" / "raw" / DEFAULT_DROP, raw / DEFAULT_DROP)
    resources = {"home": PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                                   artifact_root=str(tmp_path / "artifacts"))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("drops_routing", [ROUTING_DROP])
        instance.add_dynamic_partitions("drops", [DEFAULT_DROP])
        yield instance, resources, tmp_path


def _cleaning_stats(tmp_path, task: str, drop: str) -> dict:
    home = tmp_path / "home" if task == tasks.DEFAULT else tmp_path / "home" / "tasks" / task
    stats = json.loads((home / "data" / "cleaned" / f"{drop}.stats.json").read_text())
    return {"conflicts": stats["conflict_policy"], "near_dup_threshold": stats["near_dup"]["threshold"]}


def _all_assets_job(resources) -> dg.JobDefinition:
    """Dagster's implicit asset job of every task's assets (what the automation sensor and the asset graph launch),
    with the test's resources."""
    return dg.Definitions(assets=defs.assets, asset_checks=defs.asset_checks,
                          resources=resources).resolve_implicit_global_asset_job_def()


def _as_the_automation(instance, resources, keys, drop, run_config=None, raise_on_error=True):
    """The assets materialized as the automation sensor launches them: the implicit asset job, a selection and,
    unless given, no run config."""
    return _all_assets_job(resources).execute_in_process(
        instance=instance, partition_key=drop, asset_selection=keys, run_config=run_config,
        raise_on_error=raise_on_error)


def test_a_run_with_no_config_cleans_a_task_as_its_preset_says(env):
    instance, resources, tmp_path = env
    assert _as_the_automation(instance, resources, ROUTING_INGEST, ROUTING_DROP).success
    assert _cleaning_stats(tmp_path, "routing", ROUTING_DROP) == TASK_PRESET
    # the run recorded no config: the values are the preset's, not the run's
    run = instance.get_run_by_id(instance.get_latest_materialization_event(ROUTING_INGEST[1]).run_id)
    assert not (run.run_config or {}).get("ops")
    metadata = instance.get_latest_materialization_event(ROUTING_INGEST[1]).asset_materialization.metadata
    assert metadata["rows_in"].value == 249  # the routing drop's


def test_a_run_config_wins_over_the_tasks_preset_field_by_field(env):
    instance, resources, tmp_path = env
    # the task's job, as the Launchpad and `ft-pipeline run --task` launch it: the op's own name
    job = defs.resolve_job_def("routing__ingest_drop")
    assert job.execute_in_process(instance=instance, resources=resources, partition_key=ROUTING_DROP,
                                  run_config={"ops": {"cleaned_examples": {"config": {"conflicts": "latest"}}}}
                                  ).success
    assert _cleaning_stats(tmp_path, "routing", ROUTING_DROP) == {**TASK_PRESET, "conflicts": "latest"}
    # the all-assets job, as the asset graph's Launchpad launches a selection of routing's assets: the subset holds
    # one copy of the op, under its own name (`cleaned_examples_2` is the name in the whole job, not the run's)
    config = {"ops": {"cleaned_examples": {"config": {"near_dup_threshold": 0.95}}}}
    assert _as_the_automation(instance, resources, ROUTING_INGEST, ROUTING_DROP, run_config=config).success
    assert _cleaning_stats(tmp_path, "routing", ROUTING_DROP) == {**TASK_PRESET, "near_dup_threshold": 0.95}


def test_the_gate_of_a_run_with_no_config_is_the_tasks(env):
    """An asset check's config, under its op's name in the preset (evaluation_report_beats_base_and_champion)."""
    instance, resources, tmp_path = env
    _preset(tmp_path / "routing.yaml", GATE_CHECK, min_gain_over_base=0.6, max_retention_kl=2.5)
    reports = tmp_path / "home" / "tasks" / "routing" / "reports"
    reports.mkdir(parents=True)
    m = lambda fa: dict(json_valid=1.0, field_accuracy=fa, exact_match=fa, chrf=50.0, rouge_l=fa)  # noqa: E731
    (reports / "evaluation.json").write_text(json.dumps(
        {"metrics": {"base": m(0.1), "tuned": m(0.6)}, "champion_version": None, "retention_kl": {"tuned": 0.5}}))
    check = dg.AssetCheckKey(dg.AssetKey(["routing", "evaluation_report"]), "beats_base_and_champion")
    job = _all_assets_job(resources).get_subset(asset_selection=set(), asset_check_selection={check})
    [evaluation] = job.execute_in_process(instance=instance, raise_on_error=False).get_asset_check_evaluations()
    # +0.50 over the base passes cpu_tiny.yaml's 0.05, not the task's 0.6
    assert not evaluation.passed and "does not beat the base model's 0.100 by 0.6" in evaluation.description
    assert evaluation.metadata["max_retention_kl"].value == 2.5  # cpu_tiny.yaml's: off


def test_the_default_task_keeps_the_config_classes_defaults(env):
    instance, resources, tmp_path = env
    keys = [dg.AssetKey("raw_examples"), dg.AssetKey("cleaned_examples")]
    assert _as_the_automation(instance, resources, keys, DEFAULT_DROP).success
    # FT_PIPELINE_DEFAULTS (cpu_tiny.yaml, conftest.py), not the default task's preset in the tasks file (latest)
    assert _cleaning_stats(tmp_path, tasks.DEFAULT, DEFAULT_DROP) == {"conflicts": "keep", "near_dup_threshold": 0.8}


@pytest.mark.parametrize("config, says", [
    ({"conflicts": "sometimes"}, "ops.cleaned_examples.config.conflicts: "),  # a knob's value it may not take
    ({"conflict": "keep"}, "ops.cleaned_examples.config: unknown key(s) conflict"),  # a typo
])
def test_a_task_preset_the_step_cannot_use_fails_it_in_one_line(env, config, says):
    instance, resources, tmp_path = env
    _preset(tmp_path / "routing.yaml", **config)
    result = _as_the_automation(instance, resources, ROUTING_INGEST, ROUTING_DROP, raise_on_error=False)
    assert not result.success
    [failure] = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert description.startswith(f"{tmp_path / 'routing.yaml'}: {says}") and "\n" not in description, description


def test_a_task_preset_that_is_gone_fails_the_tasks_steps_in_one_line(env):
    instance, resources, tmp_path = env
    (tmp_path / "routing.yaml").unlink()
    result = _as_the_automation(instance, resources, ROUTING_INGEST, ROUTING_DROP, raise_on_error=False)
    [failure] = result.get_step_failure_events()  # raw_examples; cleaned_examples is skipped
    description = failure.step_failure_data.user_failure_data.description
    assert description == f"task 'routing': cannot read its preset {tmp_path / 'routing.yaml'}: No such file or " \
                          "directory"


def test_ft_pipeline_run_does_not_redo_what_a_run_with_no_config_did_as_the_preset_says(env):
    """`ft-pipeline run --task` re-ingests a drop whose last run had other config than its preset: a run with no
    config (the automation's) took the task's preset, so it is not one, while an explicit other value is."""
    from ft_pipeline.cli import staleness

    instance, resources, tmp_path = env
    assert _as_the_automation(instance, resources, ROUTING_INGEST, ROUTING_DROP).success
    found = {ROUTING_DROP: tmp_path / "raw" / "routing" / ROUTING_DROP}
    ops = tasks.get("routing").preset_ops()
    assert staleness.drops_to_ingest(instance, defs, found, ops, task="routing") == {}
    other = {"cleaned_examples": {"config": {**TASK_PRESET, "conflicts": "latest"}}}
    assert staleness.drops_to_ingest(instance, defs, found, other, task="routing") == \
        {ROUTING_DROP: "run config changed"}
