"""`python -m ft_pipeline.model.train`: the training entry point outside Dagster, alone or under a launcher.

    python -m ft_pipeline.model.train --config configs/cpu_tiny.yaml --base-dir BASE --train-jsonl train.jsonl --out OUT
    torchrun --nproc_per_node 4 -m ft_pipeline.model.train --config configs/multi_gpu_qwen.yaml ...
    accelerate launch --num_processes 4 [--config_file configs/accelerate/fsdp.yaml] -m ft_pipeline.model.train ...
    accelerate launch --multi_gpu --num_processes 2 -m ft_pipeline.model.train ...   (2 CPU processes, gloo, on a CPU)

(`accelerate launch --cpu --num_processes 2` would start one process; FSDP needs GPUs, see check_fsdp.)

The options come from a preset's `ops.lora_adapter.config` (`--config`) and/or `--options-json`. Rank 0 prints
every step log as one `FT_LOG {json}` line (the lora_adapter asset streams them into the Dagster run log) and
writes `--result-json`. With MLFLOW_TRACKING_URI and MLFLOW_RUN_ID in the environment, rank 0 logs the step
metrics into that MLflow run (the asset's own run)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def options_from(config: str | None, options_json: str | None):
    import yaml

    from ft_pipeline.model.training import TrainOptions

    knobs = {}
    if config:
        knobs.update(((yaml.safe_load(Path(config).read_text()).get("ops") or {}).get("lora_adapter") or {})
                     .get("config") or {})
    if options_json:
        knobs.update(json.loads(options_json))
    return TrainOptions(**knobs)


def result_to_json(res) -> dict:
    out = {k: v for k, v in asdict(res).items() if k != "log_history"}
    out["adapter_dir"] = str(res.adapter_dir)
    out["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun / accelerate launch
    out.update(peak_memory())
    return out


def peak_memory() -> dict:
    """This process's peak memory: GPU memory torch allocated on its device (None without CUDA), and resident."""
    import resource

    import torch

    gpu = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"peak_gpu_memory_bytes": gpu, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ft_pipeline.model.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-dir", required=True, help="local base model directory (safetensors, tokenizer)")
    p.add_argument("--train-jsonl", required=True, help="canonical records with `messages`")
    p.add_argument("--eval-jsonl", help="holdout records, for eval_steps / early stopping")
    p.add_argument("--out", required=True, help="where the adapter (or full model) is saved")
    p.add_argument("--checkpoint-dir", help="checkpoints, resumed from if present (default: OUT.checkpoints)")
    p.add_argument("--config", help="a preset YAML; its ops.lora_adapter.config are the training options")
    p.add_argument("--options-json", help="training options as JSON (override --config)")
    p.add_argument("--init-adapter", help="a LoRA adapter of this base to continue training (a warm start)")
    p.add_argument("--run-name", default="sft")
    p.add_argument("--result-json", help="rank 0 writes the training result here")
    args = p.parse_args(argv)

    from ft_pipeline.jsonl import read_jsonl
    from ft_pipeline.model.launch import LOG_PREFIX
    from ft_pipeline.model.training import train_adapter

    opts = options_from(args.config, args.options_json)
    out = Path(args.out).resolve()
    ckpt = Path(args.checkpoint_dir).resolve() if args.checkpoint_dir else out.with_name(out.name + ".checkpoints")
    train = read_jsonl(Path(args.train_jsonl))
    holdout = read_jsonl(Path(args.eval_jsonl)) if args.eval_jsonl and opts.eval_steps > 0 else None
    res = train_adapter(Path(args.base_dir), train, ckpt, out, opts, run_name=args.run_name,
                        report_to_mlflow=bool(os.environ.get("MLFLOW_RUN_ID")),
                        on_log=lambda d: print(LOG_PREFIX + json.dumps(d, default=str), flush=True),
                        eval_records=holdout, init_adapter=Path(args.init_adapter) if args.init_adapter else None)
    if args.result_json and int(os.environ.get("RANK", "0")) == 0:
        Path(args.result_json).write_text(json.dumps(result_to_json(res), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
