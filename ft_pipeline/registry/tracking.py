"""MLflow helpers that need no Dagster: log a JSONL file as an MLflow dataset with its digest."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

SCHEMA_SAMPLE_ROWS = 1000


def log_jsonl_dataset(path: Path, name: str, context: str, digest: str) -> None:
    """Record the JSONL file `path` as an input of the active run, named and digested so the same data is
    recognisably the same dataset across runs. Its schema comes from the first rows and its profile counts
    every row, so a million-row file costs a line count, not a DataFrame of a million rows."""
    import warnings

    import mlflow
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.pandas_dataset import PandasDataset

    with open(path, encoding="utf-8") as f:
        sample = [json.loads(line) for line in islice((ln for ln in f if ln.strip()), SCHEMA_SAMPLE_ROWS)]
        rows = len(sample) + sum(1 for ln in f if ln.strip())
    df = pd.DataFrame([{k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                        for k, v in r.items()} for r in sample])

    class JsonlDataset(PandasDataset):
        @property
        def profile(self):
            return {"num_rows": rows, "num_elements": rows * len(df.columns)}

    with warnings.catch_warnings():
        # Known noise, once per logged dataset: a local path matches MLflow's LocalArtifactDatasetSource twice
        # (it picks that one, which is right), and the schema hint about integer columns (line numbers) is
        # about model signatures, not datasets.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
        ds = JsonlDataset(df, source=resolve_dataset_source(str(path)), name=name, digest=digest[:16])
        mlflow.log_input(ds, context=context)
