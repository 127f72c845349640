"""The whole graph's work as one plain script: the same stage functions the assets call, at the config classes'
defaults (what `ft-pipeline run` does with the bench's preset): ingest, split, SFT, the preference pairs and DPO
from the SFT adapter, the evaluation of base, SFT, DPO (holdout, fixed set, retention, pair accuracy),
registration and the merged champion; with no Dagster and none of the assets' own MLflow bookkeeping (per-asset
runs, params, datasets, plots). bench_orch.py times it against `ft-pipeline run`; the difference is what
orchestration and per-asset tracking cost.

usage: python bench/_orch_script.py HOME MAX_STEPS"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ft_pipeline import settings
from ft_pipeline.data import cleaning, formats, splitting
from ft_pipeline.evaluation import run as eval_run
from ft_pipeline.export import merged as export
from ft_pipeline.jsonl import read_jsonl, write_jsonl
from ft_pipeline.model import base_models, training
from ft_pipeline.preference.pairs import build_pairs
from ft_pipeline.preference.training import PreferenceOptions, train_preference
from ft_pipeline.registry import versions as registry


@contextmanager
def stage(name: str):
    t0 = time.perf_counter()
    yield
    print(f"  stage {name:32s} {time.perf_counter() - t0:7.1f}s", flush=True)


def main(home: Path, max_steps: int) -> None:
    import mlflow

    data = home / "data"
    for folder in ("raw_examples", "cleaned", "quarantine", "duplicates", "split"):
        (data / folder).mkdir(parents=True, exist_ok=True)
    cleaned, signatures = {}, {}
    found, _ = formats.find_drops(settings.raw_dir())
    for drop, path in sorted(found.items()):
        with stage(f"ingest {drop}"):
            parsed = formats.read_drop(path)
            records = cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, path))
            write_jsonl(data / "raw_examples" / f"{drop}.jsonl", records)
            result = cleaning.clean_records(records, cleaning.CleaningOptions())
            for name, rows in (("cleaned", result.kept), ("quarantine", result.quarantined),
                               ("duplicates", result.duplicates)):
                write_jsonl(data / name / f"{drop}.jsonl", rows)
            cleaned[drop], signatures[drop] = data / "cleaned" / f"{drop}.jsonl", result.signatures
    with stage("base model, split"):
        base = base_models.resolve_base_model(base_models.BUILTIN_TINY, home / "models" / "base")
        splitting.split_files(cleaned, data / "split", splitting.SplitOptions(), base_models.load_tokenizer(base.path),
                              signatures)
        train, holdout = read_jsonl(data / "split" / "train.jsonl"), read_jsonl(data / "split" / "holdout.jsonl")
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    # Artifacts under the home, as the pipeline keeps them (a sqlite store's default is ./mlruns in the cwd).
    mlflow.create_experiment("bench_orch_script", artifact_location=(home / "artifacts").as_uri())
    mlflow.set_experiment("bench_orch_script")
    with stage("SFT"), mlflow.start_run() as run:
        training.train_adapter(base.path, train, home / "checkpoints", home / "adapter",
                               training.TrainOptions(max_steps=max_steps))
        info = registry.log_adapter_model(home / "adapter", base.to_json())
    with stage("preference pairs, DPO"), mlflow.start_run():
        build_pairs(settings.raw_dir() / "preferences", data / "pairs")
        train_preference(base.path, home / "adapter", read_jsonl(data / "pairs" / "train.jsonl"),
                         home / "checkpoints-dpo", home / "dpo", PreferenceOptions())
        registry.log_adapter_model(home / "dpo", base.to_json())
    # The same evaluation as evaluation_report at EvaluationConfig's defaults (evaluate_all's own): holdout and
    # fixed set, the retention check, answers cached under the home.
    with stage("evaluation"):
        fixed = read_jsonl(settings.REPO_ROOT / "data" / "eval" / "support_handwritten.jsonl")
        results = eval_run.evaluate_all(base.to_json(), home / "adapter", holdout, fixed, home / "cache",
                                        more={"dpo": home / "dpo"},
                                        pairs=read_jsonl(data / "pairs" / "holdout.jsonl"))["holdout"]
    with stage("register, merge"):
        mv, _ = registry.register(info.model_uri, "bench-orch-script", run.info.run_id, {})
        registry.set_champion("bench-orch-script", mv.version)
        export.export_registered("bench-orch-script", "champion", home / "merged")
    print(f"script: tuned field_accuracy {results['tuned']['metrics']['field_accuracy']:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
