"""GPU tier (skipped without CUDA): the GPU presets' architecture, a Qwen2 model built locally from a config
(no download), trains a few steps in bf16 with LoRA, and with QLoRA on a 4-bit base."""

import math

import pytest
import torch
import yaml

from ft_pipeline.core.training import TrainOptions, train_adapter
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests.test_training import records

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_qwen(tmp_path_factory):
    """A 2-layer Qwen2 (the architecture of Qwen2.5-*-Instruct) with the tiny byte-level tokenizer and template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ft_pipeline.core.base_models import build_tiny_tokenizer

    out = tmp_path_factory.mktemp("qwen2")
    tok = build_tiny_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def preset_options(name: str, **override) -> TrainOptions:
    cfg = yaml.safe_load((REPO_ROOT / "configs" / name).read_text())["ops"]["lora_adapter"]["config"]
    return TrainOptions(**{**cfg, "max_steps": 4, "logging_steps": 1, "save_steps": 2, "warmup_steps": 0,
                           "per_device_train_batch_size": 4, **override})


def test_gpu_lora_preset_trains_in_bf16(small_qwen, tmp_path):
    from ft_pipeline.core.training import resolve_precision

    assert resolve_precision("auto") == "bf16"
    logs = []
    res = train_adapter(small_qwen, records(), tmp_path / "ckpt", tmp_path / "adapter",
                        preset_options("gpu_lora_qwen.yaml"), report_to_mlflow=False, on_log=logs.append)
    losses = [d["loss"] for d in logs if "loss" in d]
    assert res.global_step == 4 and len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_qlora_preset_trains_on_a_4bit_base(small_qwen, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install bitsandbytes)")
    from ft_pipeline.core.training import build_trainer

    opts = preset_options("qlora_qwen.yaml")
    trainer = build_trainer(small_qwen, records(), tmp_path / "ckpt", opts, report_to_mlflow=False)
    base_linear = trainer.model.base_model.model.model.layers[0].mlp.up_proj.base_layer
    assert type(base_linear).__name__ == "Linear4bit"  # the frozen base really is 4-bit
    res = train_adapter(small_qwen, records(), tmp_path / "ckpt2", tmp_path / "adapter", opts, report_to_mlflow=False)
    assert res.global_step == 4 and math.isfinite(res.train_loss)
