"""MLflow helpers that need no Dagster: log a JSONL file as an MLflow dataset with its digest."""

from __future__ import annotations

import json
from pathlib import Path


def log_jsonl_dataset(records: list[dict], path: Path, name: str, context: str, digest: str) -> None:
    """Record `records` (the rows of `path`) as an input of the active run, named and digested so the same
    data is recognisably the same dataset across runs."""
    import mlflow
    import pandas as pd

    df = pd.DataFrame([{k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                        for k, v in r.items()} for r in records])
    ds = mlflow.data.from_pandas(df, source=str(path), name=name, digest=digest[:16])
    mlflow.log_input(ds, context=context)
