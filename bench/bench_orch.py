"""Orchestration benchmarks, measured side by side in one run on the demo data and builtin:tiny:

- orch.overhead_fraction: (wall time of `ft-pipeline run` through Dagster - the same core functions called from
  one script) / the Dagster wall time. Both run as fresh processes on fresh stores with the same training steps
  (BENCH_ORCH_STEPS, default 400: the default run). The Dagster side also pays for what the script leaves out:
  one MLflow run per asset with its params and dataset inputs, the event log, checks and the config-aware
  staleness pass, so this is an upper bound on Dagster's own share.
- orch.noop_rerun_s: the same `ft-pipeline run` again with nothing changed: it must train nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._report import bench_line  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STEPS = int(os.environ.get("BENCH_ORCH_STEPS", "400"))


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        tmp = Path(tmp)
        preset = tmp / "preset.yaml"
        # The gate is relaxed so a short BENCH_ORCH_STEPS run still goes through registration: this measures
        # orchestration, not model quality.
        preset.write_text(f"ops:\n  lora_adapter:\n    config:\n      max_steps: {STEPS}\n"
                          "  evaluation_report_beats_base_and_champion:\n    config:\n      min_json_valid: 0.0\n"
                          "      min_gain_over_base: -1.0\n      max_loss_vs_champion: 1.0\n")
        env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
        script_s, out = timed([sys.executable, "bench/_orch_script.py", str(tmp / "script"), str(STEPS)], env)
        print(f"# script (core functions only): {script_s:.1f}s  {out.strip().splitlines()[-1]}")
        env_d = {**env, "FT_PIPELINE_HOME": str(tmp / "dagster")}
        cli = [sys.executable, "-m", "ft_pipeline.cli", "run", "--preset", str(preset)]
        dagster_s, out = timed(cli, env_d)
        tuned = [line for line in out.splitlines() if line.strip().startswith("field_accuracy")]
        print(f"# ft-pipeline run through Dagster: {dagster_s:.1f}s  {tuned[0].strip() if tuned else ''}")
        noop_s, out = timed(cli, env_d)
        trained_nothing = "nothing to do" in out
        print(f"# the same run again: {noop_s:.1f}s, {'trained nothing' if trained_nothing else 'DID WORK'}")
    bench_line("orch.overhead_fraction", (dagster_s - script_s) / dagster_s, "ratio", "<=", 0.05)
    bench_line("orch.noop_rerun_s", noop_s if trained_nothing else float("inf"), "s", "<=", 15)


if __name__ == "__main__":
    main()
