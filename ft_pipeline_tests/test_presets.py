"""Every preset in configs/ parses into the Dagster config classes and the training options they map to, so a
typo in a preset fails here and not after a model download."""

from pathlib import Path

import pytest
import yaml

from ft_pipeline.defs.model import BaseModelConfig, TrainConfig
from ft_pipeline.settings import REPO_ROOT

PRESETS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


def test_there_are_presets():
    assert {p.name for p in PRESETS} >= {"cpu_tiny.yaml", "smoke.yaml", "gpu_lora_qwen.yaml", "qlora_qwen.yaml",
                                         "full_tiny.yaml", "multi_gpu_qwen.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_parses_into_the_config_classes(path: Path):
    text = path.read_text()
    assert text.startswith("# ") and "Run:" in text.split("ops:")[0], f"{path.name}: header must say how to run it"
    ops = yaml.safe_load(text)["ops"]
    train = TrainConfig(**ops.get("lora_adapter", {}).get("config", {}))
    opts = train.options()  # TrainOptions validates combinations (QLoRA + full, patience without eval, ...)
    BaseModelConfig(**ops.get("base_model", {}).get("config", {}))
    if opts.accelerate_config:
        assert (REPO_ROOT / opts.accelerate_config).is_file()


TINY = ["cpu_tiny.yaml", "smoke.yaml", "full_tiny.yaml"]
_DUMP = """
import json, sys, yaml
from ft_pipeline.defs import evaluation as e, model as m, preference as p
classes = {"base_model": m.BaseModelConfig, "lora_adapter": m.TrainConfig, "preference_adapter": p.PreferenceConfig,
           "evaluation_report": e.EvaluationConfig, e.GATE_CHECK: e.GateConfig}
if sys.argv[1:] == ["defaults"]:
    print(json.dumps([m.BaseModelConfig().base_model, m.TrainConfig().max_steps, m.TrainConfig().learning_rate,
                      p.PreferenceConfig().enabled, e.EvaluationConfig().batch_size, e.GateConfig().max_retention_kl]))
else:
    out = {}
    for name in sys.argv[1:]:
        ops = yaml.safe_load(open("configs/" + name))["ops"]
        out[name] = {op: cls(**((ops.get(op) or {}).get("config") or {})).model_dump() for op, cls in classes.items()}
    print(json.dumps(out))
"""


def _dump(defaults: str | None, *args: str):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FT_PIPELINE_DEFAULTS"}
    if defaults:
        env["FT_PIPELINE_DEFAULTS"] = defaults
    out = subprocess.run([sys.executable, "-c", _DUMP, *args], env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_tiny_preset_runs_the_same_whichever_preset_gives_the_defaults():
    # The config classes' defaults are cpu_smollm2.yaml's, the tests' cpu_tiny.yaml's: a builtin:tiny preset sets
    # every knob on which they differ, or `make run PRESET=...` would train tiny with SmolLM2's rate and gate.
    assert _dump(None, *TINY) == _dump("configs/cpu_tiny.yaml", *TINY)


@pytest.mark.parametrize("defaults, expected", [
    (None, ["smollm2-135m-instruct", 80, 1e-3, False, 64, 2.0]),  # what `make run` runs
    ("configs/cpu_tiny.yaml", ["builtin:tiny", 400, 3e-3, True, 64, None]),  # what the tests run
])
def test_the_config_classes_take_their_defaults_from_the_defaults_preset(defaults, expected):
    assert _dump(defaults, "defaults") == expected


def test_preset_knobs_mean_what_their_names_say():
    load = lambda name: TrainConfig(  # noqa: E731
        **yaml.safe_load((REPO_ROOT / "configs" / name).read_text())["ops"]["lora_adapter"]["config"]).options()
    assert load("qlora_qwen.yaml").load_in_4bit and load("qlora_qwen.yaml").finetune == "lora"
    full = load("full_tiny.yaml")
    assert full.finetune == "full" and full.learning_rate < TrainConfig().learning_rate
    multi = load("multi_gpu_qwen.yaml")
    assert multi.launcher == "accelerate" and multi.num_processes > 1


@pytest.mark.parametrize("bad, message", [
    (dict(finetune="partial"), "must be one of lora, full"),
    (dict(finetune="full", load_in_4bit=True), "set finetune: lora"),
    (dict(early_stopping_patience=2), "need eval_steps > 0"),
    (dict(eval_steps=20, save_steps=50, load_best_model_at_end=True), "multiple of eval_steps"),
    (dict(num_processes=2), "need launcher torchrun or accelerate"),
    (dict(launcher="slurm"), "must be one of in_process, subprocess"),
])
def test_bad_combinations_fail_when_the_config_is_read(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad).options()


def test_qlora_fails_clearly_where_bitsandbytes_or_cuda_is_missing():
    import importlib.util

    import torch

    from ft_pipeline.model.training import TrainOptions, quantization_config

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA (the gpu tier trains it)")
    with pytest.raises(RuntimeError, match=r"load_in_4bit \(QLoRA\) needs (the bitsandbytes package|a CUDA GPU)"):
        quantization_config(TrainOptions(load_in_4bit=True))
    assert quantization_config(TrainOptions()) is None
