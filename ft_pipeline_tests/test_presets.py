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


def test_preset_knobs_mean_what_their_names_say():
    load = lambda name: TrainConfig(**yaml.safe_load((REPO_ROOT / "configs" / name).read_text())["ops"]["lora_adapter"]["config"]).options()  # noqa: E731
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

    from ft_pipeline.core.training import TrainOptions, quantization_config

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run QLoRA (the gpu tier trains it)")
    with pytest.raises(RuntimeError, match=r"load_in_4bit \(QLoRA\) needs (the bitsandbytes package|a CUDA GPU)"):
        quantization_config(TrainOptions(load_in_4bit=True))
    assert quantization_config(TrainOptions()) is None
