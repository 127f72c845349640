"""Training in a child process: `python -m ft_pipeline.model.train` alone, under torchrun, or under accelerate launch
(DDP, or FSDP with an accelerate config file). Its step logs stream back line by line and its metrics go to the
caller's MLflow run (MLFLOW_RUN_ID in the child's environment; only rank 0 logs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Callable

from ft_pipeline.model.training import TrainOptions

LOG_PREFIX = "FT_LOG "  # a step log line from the child: LOG_PREFIX + json
# The last line of a Python traceback, as a rank prints it ("[rank0]: pkg.SomeError: message"): the child's own
# error, which a launcher's report (torchrun's ChildFailedError summary) can push out of the output's tail.
_ERROR_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)(?::.*)?)$")


def launch_command(opts: TrainOptions, repo_root: Path) -> list[str]:
    """The command line that starts the training entry point under `opts.launcher`."""
    entry = ["-m", "ft_pipeline.model.train"]
    n = str(opts.num_processes)
    if opts.launcher == "subprocess":
        return [sys.executable, *entry]
    if opts.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n, *entry]
    if opts.launcher == "accelerate":
        import torch

        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", n, "--num_machines", "1"]
        if opts.accelerate_config:
            cmd += ["--config_file", str((repo_root / opts.accelerate_config).resolve())]
        elif opts.num_processes > 1:
            # accelerate's torch.distributed launcher: one process per GPU (nccl) or, on a machine without a GPU,
            # CPU processes over gloo (how CI exercises this path). `--cpu` would start ONE process whatever
            # --num_processes says: accelerate 1.15 starts several CPU processes only through mpirun (a hostfile).
            cmd += ["--multi_gpu"]
        elif not torch.cuda.is_available():
            cmd += ["--cpu"]
        return [*cmd, *entry]
    raise ValueError(f"launcher {opts.launcher!r} does not start a child process")


def train_in_child(opts: TrainOptions, base_dir: Path, train_jsonl: Path, checkpoint_dir: Path, out_dir: Path,
                   result_json: Path, run_name: str, repo_root: Path, eval_jsonl: Path | None = None,
                   on_log: Callable[[dict], None] | None = None, on_line: Callable[[str], None] | None = None,
                   env: dict | None = None, init_adapter: Path | None = None) -> dict:
    """Run the training entry point under `opts.launcher` and return its result (the JSON rank 0 wrote).
    `on_log` gets each step log, `on_line` every other output line; a failed child raises with its last lines."""
    cmd = launch_command(opts, repo_root) + [
        "--base-dir", str(base_dir), "--train-jsonl", str(train_jsonl), "--out", str(out_dir),
        "--checkpoint-dir", str(checkpoint_dir), "--options-json", json.dumps(opts.to_json()),
        "--run-name", run_name, "--result-json", str(result_json)]
    if eval_jsonl is not None:
        cmd += ["--eval-jsonl", str(eval_jsonl)]
    if init_adapter is not None:
        cmd += ["--init-adapter", str(init_adapter)]
    result_json.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(repo_root), os.environ.get("PYTHONPATH")]))}
    tail: deque[str] = deque(maxlen=40)
    first_error = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env,
                          cwd=repo_root, bufsize=1) as proc:
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith(LOG_PREFIX):
                    if on_log:
                        on_log(json.loads(line[len(LOG_PREFIX):]))
                    continue
                tail.append(line)
                if first_error is None and (m := _ERROR_LINE.match(line)):
                    first_error = m.group(1)
                if on_line:
                    on_line(line)
        except BaseException:  # Ctrl-C / SIGTERM of the run: stop the trainer too, its checkpoints stay
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"training ({opts.launcher}, {opts.num_processes} process(es)) exited with "
                           f"{proc.returncode}" + (f": {first_error}" if first_error else "")
                           + "\nits last output:\n" + "\n".join(tail))
    return json.loads(result_json.read_text())
