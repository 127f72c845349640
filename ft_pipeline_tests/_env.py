"""The environment for the CLI, dagster and mlflow subprocesses the slow tests start: every store under a
temporary folder, and nothing of the user's own settings leaking in."""

import os
import shutil
from pathlib import Path

import yaml

from ft_pipeline.settings import REPO_ROOT

# Each would point a subprocess at the user's own stores or change what the automation does.
_USER_SETTINGS = ("MLFLOW_TRACKING_URI", "DAGSTER_HOME", "FT_PIPELINE_RETRAIN_CRON", "FT_PIPELINE_RAW_DIR")


def isolated_env(tmp: Path, raw: Path | None = None) -> dict:
    """FT_PIPELINE_HOME=tmp/home, drops from `raw` (default: the repo's data/raw)."""
    env = {k: v for k, v in os.environ.items() if k not in _USER_SETTINGS}
    env["FT_PIPELINE_HOME"] = str(tmp / "home")
    if raw is not None:
        env["FT_PIPELINE_RAW_DIR"] = str(raw)
    return env


def demo_drops(tmp: Path) -> Path:
    """A copy of the demo drops under tmp, for tests that add, change or break drops."""
    raw = tmp / "raw"
    shutil.copytree(REPO_ROOT / "data" / "raw", raw)
    return raw


def smoke_preset(path: Path, **ops: dict) -> Path:
    """configs/smoke.yaml with some knobs changed (`lora_adapter={"max_steps": 24}`), written to `path`. Loaded and
    updated as YAML, not by replacing text, so a knob is set even when smoke.yaml's wording of it changes."""
    preset = yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text())
    for op, knobs in ops.items():
        preset["ops"].setdefault(op, {}).setdefault("config", {}).update(knobs)
    path.write_text(yaml.safe_dump(preset))
    return path
