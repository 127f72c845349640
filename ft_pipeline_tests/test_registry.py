"""The registry on a real MLflow SQLite store in tmp_path: a retried registration reuses its version, and a
rollback (promote an older version) moves `champion` while every version stays registered."""

import json
import os

import mlflow
import pytest

from ft_pipeline.cli.main import main
from ft_pipeline.registry import versions as registry


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[str], params=None) -> list[str]:
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # what the CLI reads
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=(tmp / "artifacts").as_uri()))
    yield uri
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def training_run() -> tuple[str, str]:
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return run.info.run_id, info.model_uri


def _new_version(name):
    """register() arguments for a new training run of `name`."""
    run_id, uri = training_run()
    return uri, name, run_id, {}


def versions(name):
    return sorted(int(mv.version) for mv in mlflow.MlflowClient().search_model_versions(f"name = '{name}'"))


def test_a_retried_registration_creates_no_duplicate_version(store):
    run_id, uri = training_run()
    first, created = registry.register(uri, "retry", run_id, {"eval.field_accuracy": "0.5"})
    again, created_again = registry.register(uri, "retry", run_id, {"eval.field_accuracy": "0.6"})
    assert (created, created_again) == (True, False)
    assert again.version == first.version and versions("retry") == [1]
    tags = mlflow.MlflowClient().get_model_version("retry", first.version).tags
    assert tags["eval.field_accuracy"] == "0.6" and tags["training_run_id"] == run_id  # the retry's tags win


def test_rollback_moves_champion_and_keeps_every_version(store):
    for _ in range(2):
        mv, _ = registry.register(*_new_version("rollback"))
        registry.set_champion("rollback", mv.version)
    assert str(registry.champion("rollback").version) == "2"
    assert registry.promote("rollback", "1") == "2"
    assert str(registry.champion("rollback").version) == "1" and versions("rollback") == [1, 2]
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry.promote("rollback", "7")  # an unknown version moves nothing
    assert str(registry.champion("rollback").version) == "1"


def test_promote_command_rolls_forward_again(store, capsys):
    for _ in range(2):
        registry.register(*_new_version("cli"))
    registry.set_champion("cli", "1")
    assert main(["promote", "--model", "cli", "--version", "2"]) == 0
    assert capsys.readouterr().out.strip() == "cli: champion 1 -> 2"
    assert str(registry.champion("cli").version) == "2" and versions("cli") == [1, 2]


def test_trained_on_shows_the_real_aliases(store, capsys):
    """search_model_versions returns versions without aliases: trained-on must still say which is champion."""
    row = {"drop": "d", "line": 3, "raw_sha256": "ab" * 32, "id": "x"}
    for _ in range(2):
        with mlflow.start_run() as run:
            registry.log_lineage([row], {"d": "d.jsonl"})
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        registry.register(info.model_uri, "aliased", run.info.run_id, {})
    registry.set_champion("aliased", "1")
    hits = registry.versions_trained_on("aliased", "d.jsonl", 3)
    assert [(h["version"], h["aliases"]) for h in hits] == [("1", ["champion"]), ("2", [])]
    assert main(["trained-on", "--model", "aliased", "--drop", "d", "--raw-sha256", "abab"]) == 0
    assert '"aliases": ["champion"]' in capsys.readouterr().out


@pytest.fixture
def support_task(tmp_path, monkeypatch):
    """A tasks file with a task `support` registering the model `tasked`."""
    (tmp_path / "tasks.yaml").write_text("tasks:\n  support: {registered_model_name: tasked}\n")
    monkeypatch.setenv("FT_PIPELINE_TASKS", str(tmp_path / "tasks.yaml"))
    monkeypatch.setenv("FT_PIPELINE_HOME", str(tmp_path / "home"))  # no fine-tuning jobs' tasks
    return "support"


def test_task_names_the_registered_model_of_promote_lineage_and_trained_on(store, support_task, capsys):
    row = {"drop": "t", "line": 1, "raw_sha256": "cd" * 32, "id": "y"}
    for _ in range(2):
        with mlflow.start_run() as run:
            registry.log_lineage([row])
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        registry.register(info.model_uri, "tasked", run.info.run_id, {})
    registry.set_champion("tasked", "1")
    assert main(["promote", "--task", support_task, "--version", "2"]) == 0
    assert capsys.readouterr().out.strip() == "tasked: champion 1 -> 2"
    assert main(["promote", "--task", support_task, "--model", "tasked", "--version", "1"]) == 0  # they agree
    assert capsys.readouterr().out.strip() == "tasked: champion 2 -> 1"
    assert main(["lineage", "--task", support_task]) == 0
    out = capsys.readouterr()
    assert [json.loads(x)["raw_sha256"] for x in out.out.splitlines()] == [row["raw_sha256"]]
    assert "1 rows trained tasked version 1" in out.err
    assert main(["trained-on", "--task", support_task, "--drop", "t", "--line", "1"]) == 0
    assert [json.loads(x)["version"] for x in capsys.readouterr().out.splitlines()] == ["1", "2"]


@pytest.mark.parametrize("cmd", [["promote", "--version", "1"], ["lineage"], ["trained-on", "--drop", "t"],
                                 ["export", "--out", "OUT"]])
@pytest.mark.parametrize("flags, says", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "Bad!"], "task name 'Bad!' is not a slug"),
    (["--task", "support", "--model", "ft-pipeline-adapter"],
     "--model ft-pipeline-adapter is not task support's registered model (tasked)"),
])
def test_a_bad_task_or_one_that_disagrees_with_model_is_one_line_and_exit_2(store, support_task, tmp_path, capsys,
                                                                              cmd, flags, says):
    before = versions("tasked")
    cmd = [str(tmp_path / "out") if a == "OUT" else a for a in cmd]
    assert main(cmd + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ft-pipeline {cmd[0]}: ") and says in err and len(err.splitlines()) == 1, err
    assert versions("tasked") == before and not (tmp_path / "out").exists()
