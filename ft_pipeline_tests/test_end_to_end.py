"""The whole graph through the real CLI, Dagster instance, MLflow store and registry, into tmp_path: a broken
drop fails only its own partition, the model is registered as champion and predicts in a fresh process."""

import json
import subprocess
import sys

import pytest

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import demo_drops, isolated_env

pytestmark = pytest.mark.slow

SMOKE = REPO_ROOT / "configs" / "smoke.yaml"


def warm_preset(tmp, steps: int):
    """The smoke preset with warm starts on: a retrain continues the champion for `steps` steps."""
    import yaml

    preset = yaml.safe_load(SMOKE.read_text())
    preset["ops"]["lora_adapter"]["config"]["warm_start_steps"] = steps
    path = tmp / f"warm{steps}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def run_cli(env, *args):
    return subprocess.run([sys.executable, "-m", "ft_pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    raw = demo_drops(tmp)
    (raw / "2026-04-broken.json").write_text('[{"instruction": "x", "output": "y"},\n{"instruction": ')
    env = isolated_env(tmp, raw)
    first = run_cli(env, "run", "--preset", str(SMOKE))
    return tmp, env, first


def test_main_job_succeeds_and_names_the_broken_drop(pipeline):
    tmp, env, first = pipeline
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert ("2026-04-broken.json" in out and "FAILED" in out
            and "line 2: malformed JSON: the file ends before the array is closed" in out)
    assert "1 drop(s) failed and were left out: 2026-04-broken.json" in out
    # smoke's 10-step SFT model and its 4-step DPO model both score 0 on the gate metric: a tie keeps SFT
    assert "to the gate: SFT (DPO field_accuracy 0.000 does not beat SFT's 0.000)" in out
    assert "registered: ft-pipeline-adapter version 1 (SFT; alias champion; previous champion: none)" in out
    # the terminal: one line per finished stage, not Dagster's event stream or known-noise warnings
    for stage in ("raw_examples[2026-01-support_chat.jsonl]", "base_model", "lora_adapter", "preference_pairs",
                  "check pairs_accounted_for: 2026-04-preferences.jsonl: 320 rows in, 313 kept + 5 quarantined + 2 "
                  "duplicates + 0 erased on disk", "preference_adapter", "evaluation_report",
                  "registered_model", "check beats_base_and_champion: passes the gate"):
        assert f"  ok    {stage}" in out, stage
    assert "FAIL  raw_examples[2026-04-broken.json]" in out
    assert " - dagster - " not in out + first.stderr and "STEP_SUCCESS" not in out + first.stderr
    assert "is_gradient_checkpointing" not in first.stderr and "interpreted in multiple ways" not in first.stderr
    # MLflow's own lines stay in the steps' compute logs (the step's stderr in the Dagster UI), off the terminal
    logged = "".join(p.read_text() for p in (tmp / "home" / "dagster" / "storage").glob("*/compute_logs/*.err"))
    for line in ("Creating initial MLflow database tables", "Successfully registered model 'ft-pipeline-adapter'",
                 "Created version '1' of model 'ft-pipeline-adapter'"):
        assert line not in out + first.stderr and line in logged, line
    manifest = json.loads((tmp / "home" / "data" / "split" / "manifest.json").read_text())
    assert sorted(manifest["drops"]) == ["2026-01-support_chat.jsonl", "2026-02-helpdesk_alpaca.json",
                                         "2026-03-tickets.csv"]


def test_runs_and_materializations_are_in_the_persistent_instance(pipeline):
    tmp, env, _ = pipeline
    code = """
import dagster as dg
inst = dg.DagsterInstance.get()
runs = inst.get_runs()
print(sorted({r.job_name for r in runs}), len(runs))
for key in ["raw_examples", "cleaned_examples", "train_set", "holdout_set", "base_model", "lora_adapter",
            "evaluation_report", "registered_model", "merged_model", "gguf_model"]:
    assert inst.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
ev = inst.get_latest_materialization_event(dg.AssetKey("lora_adapter")).asset_materialization
print(ev.metadata["mlflow_run"].value)
"""
    out = subprocess.run([sys.executable, "-c", code], env={**env, "DAGSTER_HOME": str(tmp / "home" / "dagster")},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    # 4 drops, then the split on its own (an unchanged split would retrain nothing), then training to registration
    assert "['ingest_drop', 'train_and_register'] 6" in out.stdout
    assert "http://127.0.0.1:5000/#/experiments/" in out.stdout


def test_the_champion_is_exported_as_gguf(pipeline):
    """gguf_model: the champion (builtin:tiny, merged) as Q8_0 GGUF + Modelfile in models/gguf, logged with its
    training run and tagged on the version."""
    import mlflow

    from ft_pipeline.data.formats import sha256_file

    tmp, _, _ = pipeline
    out = tmp / "home" / "models" / "gguf"
    assert {p.name for p in out.iterdir()} == {"model.gguf", "Modelfile", "export.json"}
    meta = json.loads((out / "export.json").read_text())
    assert meta["version"] == "1" and meta["type"] == "q8_0" and meta["format"] == "gguf"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'home' / 'mlflow' / 'mlflow.db'}")
    tags = client.get_model_version("ft-pipeline-adapter", "1").tags
    run_id = meta["training_run_id"]
    assert tags["gguf_type"] == "q8_0" and tags["gguf_sha256"] == sha256_file(out / "model.gguf")
    assert tags["gguf_file"] == f"runs:/{run_id}/gguf/model.gguf"
    assert {a.path for a in client.list_artifacts(run_id, "gguf")} == {"gguf/model.gguf", "gguf/Modelfile",
                                                                       "gguf/export.json"}


def test_mlflow_records_lineage_and_the_champion_predicts_in_a_fresh_process(pipeline):
    tmp, env, _ = pipeline
    code = """
import json, mlflow
c = mlflow.MlflowClient()
mv = c.get_model_version_by_alias("ft-pipeline-adapter", "champion")
run = c.get_run(mv.tags["training_run_id"])
assert run.data.tags["dagster.asset_key"] == "lora_adapter" and run.data.tags["dagster.run_id"]
assert run.data.tags["dagster.code_version"] == "train-v2"
assert ([i.dataset.name for i in run.inputs.dataset_inputs] == ["train_set"]
        and run.inputs.dataset_inputs[0].dataset.digest)
assert "loss" in run.data.metrics and "train.learning_rate" in run.data.params
assert set(json.loads(mv.tags["data_versions"])) == {"2026-01-support_chat.jsonl", "2026-02-helpdesk_alpaca.json",
                                                     "2026-03-tickets.csv"}
assert "eval.field_accuracy" in mv.tags
ev = mlflow.search_runs(filter_string="tags.`dagster.asset_key` = 'evaluation_report'", search_all_experiments=True,
                       output_format="list")[0]
assert ({"evaluation.md", "samples.json", "loss_curve.png", "metric_comparison.png"}
        <= {a.path for a in c.list_artifacts(ev.info.run_id)})
assert "eval.chrf" in ev.data.metrics and "tuned.rouge_l" in ev.data.metrics and "dpo.rouge_l" in ev.data.metrics
assert 0 <= ev.data.metrics["pair_accuracy.dpo"] <= 1 and "pair_accuracy.tuned" in ev.data.metrics
assert mv.tags["training.stage"] == "sft"
dpo = mlflow.search_runs(filter_string="tags.`dagster.asset_key` = 'preference_adapter'", search_all_experiments=True,
                         output_format="list")[0]
assert dpo.data.tags["sft_training_run_id"] == run.info.run_id  # DPO started from the champion's SFT adapter
for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "loss"):
    assert len(c.get_metric_history(dpo.info.run_id, k)) >= 2, k  # curves, logged every 2 of smoke's 4 steps
model = mlflow.pyfunc.load_model("models:/ft-pipeline-adapter@champion")
out = model.predict(["My order ORD-123456 never arrived", "cancel please"])
assert isinstance(out, list) and len(out) == 2 and all(isinstance(x, str) for x in out)
print("ok")
"""
    uri = f"sqlite:///{tmp / 'home' / 'mlflow' / 'mlflow.db'}"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "MLFLOW_TRACKING_URI": uri},
                         capture_output=True, text=True, cwd=tmp)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


def test_forced_retrain_compares_with_the_champion(pipeline):
    tmp, env, _ = pipeline
    # Nothing changed, so only --force retrains (test_orchestration checks that a plain re-run trains nothing).
    second = run_cli(env, "run", "--preset", str(SMOKE), "--force")
    assert second.returncode == 0, second.stdout[-3000:]
    report = json.loads((tmp / "home" / "reports" / "evaluation.json").read_text())
    assert report["champion_version"] == "1" and set(report["metrics"]) == {"base", "tuned", "dpo", "champion"}
    # Same data, config and seed: the retrained adapter scores exactly like the champion it replaces.
    assert report["metrics"]["tuned"] == report["metrics"]["champion"]
    assert report["vs_champion"] == {"better": 0, "worse": 0, "same": report["holdout_examples"]}
    assert "Versus champion version 1 on the same" in (tmp / "home" / "reports" / "evaluation.md").read_text()
    # every model also answered under the split's output schema; the champion's answers are the retrained one's
    constrained = report["constrained"]["sets"]["holdout"]["models"]
    assert set(constrained) == {"base", "tuned", "dpo", "champion"}
    assert constrained["tuned"] == constrained["champion"] and report["gate_on"] == "free"
    assert "### Free and constrained" in (tmp / "home" / "reports" / "evaluation.md").read_text()
    assert "version 2 (SFT; alias champion; previous champion: 1)" in second.stdout


def test_lineage_answers_both_ways(pipeline):
    tmp, env, _ = pipeline
    out = run_cli(env, "lineage", "--version", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    train = [json.loads(x) for x in (tmp / "home" / "data" / "split" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == len(train) and {"drop", "line", "raw_sha256", "id"} <= set(rows[0])
    row = rows[0]
    hits = run_cli(env, "trained-on", "--drop", row["drop"], "--line", str(row["line"]))
    assert [json.loads(x)["version"] for x in hits.stdout.splitlines()] == ["1", "2"]
    holdout = json.loads((tmp / "home" / "data" / "split" / "holdout.jsonl").read_text().splitlines()[0])
    none = run_cli(env, "trained-on", "--drop", holdout["drop"], "--line", str(holdout["line"]))
    assert none.returncode == 0 and none.stdout == ""  # a holdout row trained nothing


def test_export_and_rollback_through_the_cli(pipeline):
    tmp, env, _ = pipeline
    out = run_cli(env, "export", "--version", "1", "--out", str(tmp / "v1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp / "v1" / "export.json").read_text())["version"] == "1"
    assert ({"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"}
            <= {p.name for p in (tmp / "v1").iterdir()})
    back = run_cli(env, "promote", "--version", "1")  # version 2 is champion after the second run
    assert back.returncode == 0 and back.stdout.strip() == "ft-pipeline-adapter: champion 2 -> 1", back.stderr[-3000:]
    hits = run_cli(env, "lineage", "--version", "champion")
    assert "ft-pipeline-adapter version 1" in hits.stderr  # the alias now resolves to version 1


def test_gguf_export_through_the_cli(pipeline):
    """The merged model as Q8_0 GGUF + Modelfile; the adapter form is refused in one line (builtin:tiny trains
    embed_tokens/lm_head as modules_to_save), and so is an --out that already holds files."""
    tmp, env, _ = pipeline
    out = run_cli(env, "export", "--format", "gguf", "--version", "1", "--out", str(tmp / "g1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p.name for p in (tmp / "g1").iterdir()} == {"model.gguf", "Modelfile", "export.json"}
    meta = json.loads((tmp / "g1" / "export.json").read_text())
    assert meta["version"] == "1" and meta["type"] == "q8_0" and meta["gguf"]["tokenizer"] == "built"
    assert (tmp / "g1" / "Modelfile").read_text().startswith("FROM ./model.gguf\nTEMPLATE")
    again = run_cli(env, "export", "--format", "gguf", "--version", "1", "--out", str(tmp / "g1"))
    assert again.returncode == 2 and again.stderr.strip().endswith("add --force to replace them")
    assert len(again.stderr.strip().splitlines()) == 1
    lora = run_cli(env, "export", "--format", "gguf-adapter", "--version", "1", "--out", str(tmp / "a1"))
    assert lora.returncode == 2 and "modules_to_save" in lora.stderr and len(lora.stderr.strip().splitlines()) == 1
    assert not (tmp / "a1").exists()


def test_a_warm_start_continues_the_champion(pipeline):
    import mlflow

    tmp, env, _ = pipeline
    # version 1 is champion again after the rollback above; version 2 was trained on the same rows
    out = run_cli(env, "run", "--preset", str(warm_preset(tmp, 3)), "--force")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "warm start: continuing the champion (version 1) for 3 steps" in out.stdout
    adapter = json.loads((tmp / "home" / "models" / "adapter.json").read_text())
    assert adapter["warm_start_from"] == "1" and adapter["global_step"] == 3
    assert not (tmp / "home" / "models" / "warm_start").exists()  # the champion's copy, removed after training
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'home' / 'mlflow' / 'mlflow.db'}")
    params = client.get_run(adapter["training_run_id"]).data.params
    assert params["warm_start_from"] == "ft-pipeline-adapter/1" and params["train.max_steps"] == "3"
