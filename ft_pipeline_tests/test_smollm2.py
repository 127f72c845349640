"""The real pretrained model end to end (slow, a few minutes): the packaged SmolLM2 through base_model, a few
LoRA steps, evaluation (holdout, fixed set, retention), registration, pyfunc in a fresh process and the merged
export, all through the real CLI, Dagster instance and MLflow store. The template the model is asked with at
evaluation, through pyfunc and after export is the model's own."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import isolated_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2_converted):
    tmp = tmp_path_factory.mktemp("smollm2")
    # The home's model cache starts with the session's conversion of the GGUF file (test_gguf holds that
    # conversion to an independent one): base_model finds it converted from the same bytes and reuses it, as
    # on a second `make run`, instead of converting again (~45 s).
    converted = smollm2_converted.path
    shutil.copytree(converted, tmp / "home" / "models" / "base" / converted.relative_to(converted.parents[1]))
    preset = yaml.safe_load((REPO_ROOT / "configs" / "cpu_smollm2.yaml").read_text())
    preset["ops"]["lora_adapter"]["config"].update(max_steps=4, per_device_train_batch_size=4, save_steps=2,
                                                  warmup_steps=0)
    fixed = tmp / "support_handwritten.jsonl"  # the first 6 of the 30 hand-written examples: minutes less
    fixed.write_text("".join((REPO_ROOT / "data" / "eval" / "support_handwritten.jsonl").read_text()
                             .splitlines(keepends=True)[:6]))
    preset["ops"]["evaluation_report"]["config"].update(max_examples=8, fixed_eval_path=str(fixed),
                                                       retention_prompts=10, baseline_examples=4)
    preset["ops"]["evaluation_report_beats_base_and_champion"]["config"].update(
        min_json_valid=0.0, min_gain_over_base=-1.0, must_beat_prompting=False)  # 4 steps cannot pass the real gate
    path = tmp / "preset.yaml"
    path.write_text(yaml.safe_dump(preset))
    env = isolated_env(tmp)
    out = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--preset", str(path)], env=env,
                         capture_output=True, text=True, timeout=1500)
    return tmp, env, out


def test_registers_a_smollm2_champion(run):
    tmp, env, out = run
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "registered: ft-pipeline-adapter version 1" in out.stdout
    base = json.loads((tmp / "home" / "models" / "base_model.json").read_text())
    assert base["source"] == "gguf" and base["spec"] == "smollm2-135m-instruct"
    report = json.loads((tmp / "home" / "reports" / "evaluation.json").read_text())
    assert set(report["fixed_metrics"]) == {"base", "tuned"} and report["holdout_examples"] == 8
    assert report["retention_kl"]["tuned"] > 0  # 4 steps of LoRA at lr 1e-3 move the model a little
    md = (tmp / "home" / "reports" / "evaluation.md").read_text()
    assert "Retention: did it forget?" in md and "support_handwritten.jsonl" in md
    assert "greedy answers to 10 general prompts" in md  # retention_prompts: 10 of the 50
    assert "Was fine-tuning worth it?" in md and "dynamic_3" in md and report["baselines"]["holdout"]["n"] == 4


def test_pyfunc_in_a_fresh_process_and_the_export_use_the_models_own_template(run):
    tmp, env, out = run
    base = json.loads((tmp / "home" / "models" / "base_model.json").read_text())
    code = f"""
import json, mlflow
from transformers import AutoTokenizer
from ft_pipeline import settings
mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
model = mlflow.pyfunc.load_model("models:/ft-pipeline-adapter@champion")
print(json.dumps(model.predict(["Hi, my Nimbus 5 laptop (order ORD-123456) arrived cracked"])))
py = model.unwrap_python_model()
assert py.tokenizer.chat_template == AutoTokenizer.from_pretrained({base["path"]!r}).chat_template
"""
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    answers = json.loads(p.stdout.strip().splitlines()[-1])
    assert len(answers) == 1 and answers[0].strip()
    merged = tmp / "merged"
    e = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "export", "--out", str(merged)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert e.returncode == 0, e.stderr[-3000:]
    assert ((merged / "chat_template.jinja").read_text()
            == (REPO_ROOT / base["path"] / "chat_template.jinja").read_text())
