"""Where things live. Every path is absolute: Dagster runs steps in processes whose working directory we do
not control. One environment variable, FT_PIPELINE_HOME, moves everything the pipeline writes."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    return Path(os.environ.get("FT_PIPELINE_HOME") or REPO_ROOT / ".ft_pipeline").expanduser().resolve()


def raw_dir() -> Path:
    return Path(os.environ.get("FT_PIPELINE_RAW_DIR") or REPO_ROOT / "data" / "raw").expanduser().resolve()


def mlflow_tracking_uri(h: Path | None = None) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(h or home()) / 'mlflow' / 'mlflow.db'}"


def mlflow_artifact_root(h: Path | None = None) -> Path:
    return (h or home()) / "mlflow" / "artifacts"
