"""DPO training throughput, side by side in one process: the pipeline's preference training vs a plain TRL
DPOTrainer script with TRL's defaults, on the same model, SFT adapter, pairs and number of steps.

Model: SmolLM2-135M-Instruct (the packaged GGUF, converted once under the pipeline's home) with the options of
configs/cpu_smollm2_dpo.yaml; BENCH_DPO_MODEL=builtin:tiny measures the tiny model with configs/cpu_tiny.yaml.
The SFT adapter both start from is a fresh LoRA adapter of the preset's SFT shape (its B matrices are zero, so it
computes what the base does: speed does not depend on what an adapter learned). Pairs: the demo preference drop
(data/raw/preferences/) through the stage packages (parse, validate, redact, dedup, split); the train side. Both run the
preset's max_steps at its batch size.

- tokens/s counts real (non-pad) tokens of the chosen and rejected sequences the policy trained on (the
  Trainer's non-padding input-token count), divided by the wall time from building the trainer to the end of
  `trainer.train()`: that includes tokenizing and the reference pass, which the pipeline does once up front
  (`precompute_ref_log_probs`) and TRL's defaults do at every step, so neither side hides its reference cost.
- The TRL script is what TRL's docs show for DPO on an SFT adapter: the PeftModel loaded trainable, DPOTrainer
  with DPOConfig defaults, given the same steps, batch size, learning rate and beta, and `use_cpu=True,
  bf16=False` (which a CPU needs). Its other knobs (gradient checkpointing on, a reference forward pass per step)
  stay TRL's.

The machine is shared and noisy: run it alone. Each contender runs ROUNDS times, interleaved; the best counts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from bench._report import bench_line  # noqa: E402

MODEL = os.environ.get("BENCH_DPO_MODEL", "smollm2-135m-instruct")
PRESET = "cpu_tiny.yaml" if MODEL == "builtin:tiny" else "cpu_smollm2_dpo.yaml"
ROUNDS = int(os.environ.get("BENCH_DPO_ROUNDS", "1"))


def preset_ops(op: str) -> dict:
    import yaml

    from ft_pipeline.settings import REPO_ROOT

    return (yaml.safe_load((REPO_ROOT / "configs" / PRESET).read_text())["ops"].get(op) or {}).get("config") or {}


def demo_pairs(work: Path) -> list[dict]:
    from ft_pipeline import settings
    from ft_pipeline.jsonl import read_jsonl
    from ft_pipeline.preference.pairs import build_pairs

    build_pairs(settings.REPO_ROOT / "data" / "raw" / "preferences", work / "pairs")
    return read_jsonl(work / "pairs" / "train.jsonl")


def fresh_sft_adapter(base: Path, out: Path) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ft_pipeline.model.training import TrainOptions, lora_config

    opts = TrainOptions(**{k: v for k, v in preset_ops("lora_adapter").items()
                           if k in TrainOptions.__dataclass_fields__})
    get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), lora_config(opts)).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


def run_pipeline(base: Path, sft: Path, pairs: list[dict], work: Path, opts) -> dict:
    from ft_pipeline.preference.training import build_trainer

    t0 = time.perf_counter()
    trainer = build_trainer(base, sft, pairs, work / "ckpt-pipeline", opts, report_to_mlflow=False)
    out = trainer.train()
    wall = time.perf_counter() - t0
    real = int(trainer.state.num_input_tokens_seen)
    return {"tok_s": real / wall, "real": real, "wall_s": wall, "loss": out.training_loss}


def run_trl_defaults(base: Path, sft: Path, pairs: list[dict], work: Path, opts) -> dict:
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from ft_pipeline.preference.training import to_trl

    t0 = time.perf_counter()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(sft), is_trainable=True)
    args = DPOConfig(output_dir=str(work / "ckpt-trl"), max_steps=opts.max_steps,
                     per_device_train_batch_size=opts.per_device_train_batch_size, learning_rate=opts.learning_rate,
                     beta=opts.beta, use_cpu=True, bf16=False, report_to=[], disable_tqdm=True, save_strategy="no",
                     include_num_input_tokens_seen="non_padding")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(to_trl(pairs)),
                         processing_class=AutoTokenizer.from_pretrained(str(sft)))
    out = trainer.train()
    wall = time.perf_counter() - t0
    real = int(trainer.state.num_input_tokens_seen)
    return {"tok_s": real / wall, "real": real, "wall_s": wall, "loss": out.training_loss}


def main() -> int:
    import torch

    from ft_pipeline import settings
    from ft_pipeline.model.base_models import resolve_base_model
    from ft_pipeline.preference.training import PreferenceOptions

    opts = PreferenceOptions(**{**preset_ops("preference_adapter"), "enabled": True, "save_steps": 10 ** 6})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = demo_pairs(tmp)
        print(f"# model {MODEL}, {len(pairs)} demo train pairs, "
              f"{opts.max_steps} steps x {opts.per_device_train_batch_size} "
              f"pairs, {ROUNDS} interleaved round(s), torch threads {torch.get_num_threads()}", flush=True)
        base = resolve_base_model(MODEL, (tmp if MODEL == "builtin:tiny" else settings.home() / "models") / "base").path
        sft = fresh_sft_adapter(base, tmp / "sft")
        best = {"pipeline": None, "trl": None}
        for r in range(ROUNDS):
            work = tmp / f"round{r}"
            for name, fn in (("pipeline", run_pipeline), ("trl", run_trl_defaults)):
                res = fn(base, sft, pairs, work, opts)
                print(f"# round {r} {name:8s} {res['tok_s']:8.0f} tok/s  wall {res['wall_s']:6.1f}s  "
                      f"real {res['real']}  "
                      f"loss {res['loss']:.3f}", flush=True)
                if best[name] is None or res["tok_s"] > best[name]["tok_s"]:
                    best[name] = res
    ok = bench_line("train.dpo_vs_trl", best["pipeline"]["tok_s"] / best["trl"]["tok_s"], "x", ">=", 1.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
