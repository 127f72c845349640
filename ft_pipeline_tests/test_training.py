"""Training on the builtin tiny model: a loss is logged, the LoRA weights change, the base does not, and only
assistant tokens carry loss."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ft_pipeline.model.base_models import content_hash
from ft_pipeline.model.training import TrainOptions, build_trainer, train_adapter

pytestmark = pytest.mark.slow


def records(n=24):
    out = []
    for i in range(n):
        answer = json.dumps({"intent": "refund", "order_id": f"ORD-{100000 + i}"})
        out.append({"messages": [{"role": "user", "content": f"refund order ORD-{100000 + i} please"},
                                 {"role": "assistant", "content": answer}]})
    return out


FAST = dict(max_steps=4, per_device_train_batch_size=4, logging_steps=1, save_steps=2, warmup_steps=0)


def test_training_logs_loss_changes_lora_and_keeps_base_frozen(tiny_base, tmp_path):
    before = content_hash(tiny_base)
    base_weights = load_file(tiny_base / "model.safetensors")
    logs = []
    res = train_adapter(tiny_base, records(), tmp_path / "ckpt", tmp_path / "adapter", TrainOptions(**FAST),
                        report_to_mlflow=False, on_log=logs.append)
    losses = [d["loss"] for d in logs if "loss" in d]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert res.global_step == 4 and res.train_tokens > 0
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    emb = next(v for k, v in adapter.items() if "embed_tokens" in k)
    assert not torch.equal(emb, base_weights["model.embed_tokens.weight"])  # trainable embeddings moved
    assert content_hash(tiny_base) == before  # base files untouched
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base), tmp_path / "adapter")
    q = tuned.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(q, base_weights["model.layers.0.self_attn.q_proj.weight"])  # frozen base weight


def test_only_assistant_tokens_carry_loss(tiny_base, tmp_path):
    rec = {"messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hello"},
                        {"role": "assistant", "content": "A1", "weight": 0}, {"role": "user", "content": "again"},
                        {"role": "assistant", "content": "A2"}]}
    trainer = build_trainer(tiny_base, [rec], tmp_path / "ckpt", TrainOptions(**FAST), report_to_mlflow=False)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    tok = trainer.processing_class
    supervised = tok.decode(ids[labels != -100])
    assert supervised == "A2<|end|>"  # weight-0 turn, system, user and role markers carry no loss
    assert 0 < int((labels != -100).sum()) < len(ids)


KILL_AT_STEP_3 = """
import json, os, signal, sys
from pathlib import Path
from ft_pipeline.model.training import TrainOptions, train_adapter
base, tmp, recs, opts = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
def die(logs):
    if logs["step"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies: no exception handler, no cleanup
train_adapter(Path(base), recs, tmp / "ckpt", tmp / "adapter", TrainOptions(**opts), report_to_mlflow=False, on_log=die)
"""


def test_killed_training_resumes_from_its_last_checkpoint(tiny_base, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, str(tiny_base), str(tmp_path),
                           json.dumps(records()), json.dumps(FAST)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("checkpoint-*")) == ["checkpoint-2"]
    res = train_adapter(tiny_base, records(), tmp_path / "ckpt", tmp_path / "adapter", TrainOptions(**FAST),
                        report_to_mlflow=False)
    assert res.resumed_from.endswith("checkpoint-2") and res.global_step == 4
    assert not (tmp_path / "ckpt").exists()  # cleared once the adapter is saved
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_full_finetune_trains_base_weights_and_saves_a_whole_model(tiny_base, tmp_path):
    base_weights = load_file(tiny_base / "model.safetensors")
    res = train_adapter(tiny_base, records(), tmp_path / "ckpt", tmp_path / "out",
                        TrainOptions(**FAST, finetune="full", learning_rate=1e-3), report_to_mlflow=False)
    assert res.finetune == "full" and res.global_step == 4
    out = tmp_path / "out"
    assert (out / "config.json").exists() and not (out / "adapter_config.json").exists()
    tuned = load_file(out / "model.safetensors")
    assert set(tuned) == set(base_weights)  # the same tensors, so it loads as a plain model
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(tuned[q], base_weights[q])  # base weights trained, not only adapters
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    assert AutoTokenizer.from_pretrained(out).chat_template  # evaluation needs the template next to the model


def test_early_stopping_keeps_the_best_holdout_checkpoint(tiny_base, tmp_path):
    # A learning rate this high makes the holdout loss worse after the first steps: training must stop early
    # and end on the checkpoint with the lowest holdout loss, not the last one.
    opts = TrainOptions(max_steps=40, per_device_train_batch_size=4, logging_steps=1, warmup_steps=0,
                        learning_rate=0.5, eval_steps=2, save_steps=2, early_stopping_patience=2,
                        load_best_model_at_end=True)
    res = train_adapter(tiny_base, records(24), tmp_path / "ckpt", tmp_path / "adapter", opts,
                        report_to_mlflow=False, eval_records=records(32)[24:])
    evals = [(d["step"], d["eval_loss"]) for d in res.log_history if "eval_loss" in d]
    assert len(evals) >= 3 and res.global_step < 40  # stopped early
    best_step, best = min(evals, key=lambda e: e[1])
    assert res.best_eval_loss == pytest.approx(best) and res.best_checkpoint.endswith(f"checkpoint-{best_step}")
    assert evals[-1][1] > best  # it stopped because holdout loss got worse


def test_packing_keeps_assistant_labels_and_examples_apart(tiny_base, tmp_path):
    """TRL 1.16 packs with best-fit decreasing and goes padding-free: one row per batch, position_ids restarting
    at each example, no attention mask. On CPU (sdpa), transformers derives a block-diagonal mask from the
    position_ids, so a packed example sees only itself: its logits match the example run alone."""
    recs = records(6)
    trainer = build_trainer(tiny_base, recs, tmp_path / "ckpt", TrainOptions(**FAST, packing=True),
                            report_to_mlflow=False)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    starts = (pos == 0).nonzero().flatten().tolist()
    assert len(starts) == 6  # all six examples fit one max_length bin: one packed row
    tok = trainer.processing_class
    supervised = tok.decode(ids[labels != -100])
    assert supervised.count("<|end|>") == 6 and "<|user|>" not in supervised and "refund order" not in supervised
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        second = slice(starts[1], starts[2])
        alone = model(input_ids=ids[second][None]).logits[0]
    assert torch.allclose(packed[second], alone, atol=1e-4)  # no attention across the packed examples
    res = train_adapter(tiny_base, recs, tmp_path / "ckpt2", tmp_path / "adapter", TrainOptions(**FAST, packing=True),
                        report_to_mlflow=False)
    assert res.global_step == 4 and math.isfinite(res.train_loss)
