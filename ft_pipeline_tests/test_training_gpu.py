"""GPU tier (skipped without CUDA): the GPU presets' architecture, a Qwen2 model built locally from a config
(no download), trains a few steps in bf16 with LoRA, with QLoRA on a 4-bit base, and under FSDP on every GPU."""

import math

import pytest
import torch
import yaml

from ft_pipeline.model.training import TrainOptions, train_adapter
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests.test_training import records

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def small_qwen(tmp_path_factory):
    """A 2-layer Qwen2 (the architecture of Qwen2.5-*-Instruct) with the tiny byte-level tokenizer and template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ft_pipeline.model.base_models import build_tiny_tokenizer

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
    from ft_pipeline.model.training import resolve_precision

    assert resolve_precision("auto") == "bf16"
    logs = []
    res = train_adapter(small_qwen, records(), tmp_path / "ckpt", tmp_path / "adapter",
                        preset_options("gpu_lora_qwen.yaml"), report_to_mlflow=False, on_log=logs.append)
    losses = [d["loss"] for d in logs if "loss" in d]
    assert res.global_step == 4 and len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_qlora_preset_trains_on_a_4bit_base(small_qwen, tmp_path):
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install bitsandbytes)")
    from ft_pipeline.model.training import build_trainer

    opts = preset_options("qlora_qwen.yaml")
    trainer = build_trainer(small_qwen, records(), tmp_path / "ckpt", opts, report_to_mlflow=False)
    base_linear = trainer.model.base_model.model.model.layers[0].mlp.up_proj.base_layer
    assert type(base_linear).__name__ == "Linear4bit"  # the frozen base really is 4-bit
    res = train_adapter(small_qwen, records(), tmp_path / "ckpt2", tmp_path / "adapter", opts, report_to_mlflow=False)
    assert res.global_step == 4 and math.isfinite(res.train_loss)


def test_fsdp_config_saves_a_complete_adapter(small_qwen, tmp_path):
    """configs/accelerate/fsdp.yaml (FSDP2, checkpoints as SHARDED_STATE_DICT) on every GPU of the machine: the final
    save is a full, unsharded adapter with the single-process adapter's tensors and shapes (Trainer.save_model alone
    writes no weights under a sharded state dict), and it loads with peft and generates."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_pipeline.jsonl import write_jsonl
    from ft_pipeline.model.launch import train_in_child

    single = preset_options("multi_gpu_qwen.yaml", launcher="in_process", num_processes=1, accelerate_config="")
    train_adapter(small_qwen, records(), tmp_path / "ckpt1", tmp_path / "single", single, report_to_mlflow=False)
    write_jsonl(tmp_path / "train.jsonl", records())
    n = torch.cuda.device_count()
    opts = preset_options("multi_gpu_qwen.yaml", num_processes=n, accelerate_config="configs/accelerate/fsdp.yaml")
    res = train_in_child(opts, small_qwen, tmp_path / "train.jsonl", tmp_path / "ckpt", tmp_path / "fsdp",
                         tmp_path / "result.json", run_name="sft", repo_root=REPO_ROOT)
    assert res["world_size"] == n and res["global_step"] == 4
    full = load_file(tmp_path / "fsdp" / "adapter_model.safetensors")
    ref = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in ref.items()}
    assert all(v.abs().sum() > 0 for k, v in full.items() if "lora_B" in k)  # B starts at zero: it trained
    tok = AutoTokenizer.from_pretrained(tmp_path / "fsdp")
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(small_qwen), tmp_path / "fsdp")
    prompt = tok.apply_chat_template([{"role": "user", "content": "refund order ORD-100001 please"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = tuned.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
