"""The second demo task end to end through the real CLI, Dagster instance and MLflow registry, on builtin:tiny
(configs/cpu_tiny_routing.yaml, a relaxed gate: plumbing, not model quality): `ft-pipeline run --task routing`
ingests the task's own drops into its own files and registers the model under the task's own name, leaving the
default task's alone."""

import json
import subprocess
import sys

import pytest

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import demo_drops, isolated_env

pytestmark = pytest.mark.slow


def test_run_task_routing_registers_under_its_own_name(tmp_path):
    env = isolated_env(tmp_path, demo_drops(tmp_path))
    out = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--task", "routing", "--preset",
                          str(REPO_ROOT / "configs" / "cpu_tiny_routing.yaml")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "raw drops in " + str(tmp_path / "raw" / "routing") + ": 1" in out.stdout
    assert "registered: routing version 1 (SFT; alias champion; previous champion: none)" in out.stdout
    assert "routing__train_and_register run" in out.stdout
    home = tmp_path / "home"
    report = json.loads((home / "tasks" / "routing" / "reports" / "evaluation.json").read_text())
    assert report["holdout_examples"] == 16  # the routing holdout, not the default task's
    assert (home / "tasks" / "routing" / "models" / "adapter").is_dir()
    assert not (home / "data").exists() and not (home / "reports").exists()  # the default task's files
    code = ("import mlflow; c = mlflow.MlflowClient(); "
            "print(sorted(m.name for m in c.search_registered_models())); "
            "print(c.get_model_version_by_alias('routing', 'champion').version)")
    reg = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"})
    assert reg.stdout.split("\n")[:2] == ["['routing']", "1"], reg.stdout + reg.stderr
    # nothing changed: a second run materializes nothing
    again = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--task", "routing", "--preset",
                            str(REPO_ROOT / "configs" / "cpu_tiny_routing.yaml")],
                           env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
