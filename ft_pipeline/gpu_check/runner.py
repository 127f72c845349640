"""The check's runner: every step in order, each in a child process with a time limit inside one overall budget
(8 minutes), a failed step recorded and the next one run; then one summary, JSON and Markdown, into $OUT.

Stdlib only: it starts on the GPU machine's bare Python, before the bundle is unpacked (step `environment`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

from ft_pipeline.gpu_check import bundle, report

REPO_ROOT = bundle.REPO_ROOT
PRESET = "configs/gpu_check.yaml"
LOG_PREFIX = "FT_LOG "  # model/launch.py's: a step log line of the training entry point
# The dry run: the same steps on a CPU, on builtin:tiny, a few steps, a few answers.
DRY = {"base_model": "builtin:tiny", "eval_examples": 16, "max_new_tokens": 16, "eval_batch_size": 8,
       "matmul": {"n": 1024, "dtype": "float32", "seconds": 1.0},
       "options": {"max_steps": 6, "per_device_train_batch_size": 8, "logging_steps": 1, "warmup_steps": 0,
                   "precision": "fp32"}}
GPU = {"eval_examples": 0, "matmul": {"n": 8192, "dtype": "bfloat16", "seconds": 5.0}, "options": {}}
# Each step's own limit, in seconds (GPU); the overall budget cuts them shorter when it runs out.
LIMITS = {"environment": 120, "matmul": 60, "base_model": 150, "data": 60, "train": 240, "padding": 90,
          "evaluate": 120, "gpu_tests": 240}


class Skipped(Exception):
    """The step did not run, for the reason given."""


class Check:
    def __init__(self, dry: bool, out: Path, budget_s: float, work: Path):
        self.dry, self.out, self.work = dry, out, work
        self.deadline = time.monotonic() + budget_s
        self.steps: list[dict] = []
        self.state: dict = {}  # what steps hand on: the base model's folder, the adapter's, ...
        self.site: Path | None = None  # the unpacked bundle, first on the children's PYTHONPATH
        self.plan = self._plan()
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def _plan(self) -> dict:
        """What the steps are told: the preset (read by them: YAML is not stdlib) and the dry run's overrides."""
        return {"preset": PRESET, "dry": self.dry, **(DRY if self.dry else GPU)}

    def env(self) -> dict:
        path = [str(p) for p in (self.site, REPO_ROOT / "ft_pipeline" / "gpu_check" / "dry_site" if self.dry else None,
                                 REPO_ROOT) if p]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(PYTHONPATH=os.pathsep.join(path), PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1",
                   HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   HF_DATASETS_DISABLE_PROGRESS_BARS="1", HF_HOME=str(self.work / "hf"),
                   FT_PIPELINE_HOME=str(self.work / "home"), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        if self.dry and (self.work / "absent.txt").is_file():  # written by the environment step
            env["GPU_CHECK_ABSENT"] = str(self.work / "absent.txt")
        return env

    # -- running steps ------------------------------------------------------------------------------------------

    def step(self, name: str, fn) -> None:
        left = self.deadline - time.monotonic()
        row = {"step": name, "status": "ok", "seconds": 0.0, "error": None, "details": {}}
        t0 = time.monotonic()
        try:
            if left < 15:
                raise Skipped(f"no time left of the check's budget ({left:.0f} s)")
            row["details"] = fn(min(LIMITS.get(name, 120), left)) or {}
        except Skipped as e:
            row.update(status="skipped", error=str(e))
        except Exception as e:  # a failed step is recorded, and the next one runs
            row.update(status="failed", error=f"{type(e).__name__}: {e}"[-3000:])
            (self.out / "logs" / f"{name}.traceback.txt").write_text(traceback.format_exc())
        row["seconds"] = round(time.monotonic() - t0, 1)
        self.steps.append(row)
        print(f"gpu-check: {name}: {row['status']} ({row['seconds']} s)"
              + (f": {row['error'].splitlines()[0]}" if row["error"] else ""), flush=True)

    def child(self, name: str, cmd: list[str], timeout: float, on_line=None) -> None:
        """Run `cmd` from the repository root, its output into logs/NAME.log; fail with its last lines when it
        exits non-zero or outlives `timeout` (its process group is killed)."""
        log = self.out / "logs" / f"{name}.log"
        with open(log, "w") as f, subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env(), stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True, start_new_session=True) as p:
            def pump():
                for line in p.stdout:
                    f.write(line)
                    if on_line:
                        on_line(line.rstrip("\n"))

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                reader.join(5)
                raise TimeoutError(f"stopped after {timeout:.0f} s (its limit); output in logs/{name}.log") from None
            reader.join(5)
        if p.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"exited with {p.returncode}; the end of logs/{name}.log:\n" + "\n".join(tail))

    def python_step(self, name: str, timeout: float) -> dict:
        """A step of steps.py in its own process, with the plan and what earlier steps handed on."""
        plan, result = self.work / f"{name}.plan.json", self.work / f"{name}.result.json"
        plan.write_text(json.dumps({**self.plan, **self.state, "work": str(self.work)}))
        self.child(name, [sys.executable, "-m", "ft_pipeline.gpu_check.steps", name, str(plan), str(result)], timeout)
        return json.loads(result.read_text())

    def need(self, *keys: str) -> None:
        missing = [k for k in keys if k not in self.state]
        if missing:
            raise Skipped(f"needs {', '.join(missing)} from an earlier step, which failed")

    # -- the steps ----------------------------------------------------------------------------------------------

    def environment(self, timeout: float) -> dict:
        manifest = bundle.read_manifest()
        out: dict = {"bundle": None}
        if self.dry:  # this Python is the development environment: check the bundle matches it, hide what is absent
            (self.work / "absent.txt").write_text("\n".join(bundle.absent_modules()))
            if manifest is not None:
                bundled = manifest["pins"]
                stale = {n: (v, bundled.get(n)) for n, v in bundle.pins().items() if bundled.get(n) != v}
                if stale:
                    raise RuntimeError(f"gpu-bundle/ is stale (here, bundled): {stale}; run `make gpu-bundle`")
        else:  # raises without a bundle, saying how to build and carry it
            bundle.install(bundle.BUNDLE_DIR, self.work / "site")
            self.site = self.work / "site"
        if manifest is not None:
            out["bundle"] = {"wheels": len(manifest["wheels"]), "bytes": sum(manifest["wheels"].values()),
                             "python": manifest["python"], "installed": not self.dry}
            self.state["pins"] = manifest["pins"]
        out.update(self.python_step("versions", timeout))
        self.state["versions"] = out
        if not self.dry and not out.get("cuda_available"):
            raise RuntimeError(f"torch {out['torch']} sees no CUDA device; run with GPU_CHECK_DRY=1 on a CPU")
        if manifest is None:
            raise Skipped("no gpu-bundle/ here (`make gpu-bundle` builds it): its match with this environment was "
                          "not checked; " + json.dumps(out["packages"]["transformers"]))
        return out

    def train(self, timeout: float) -> dict:
        self.need("base_dir", "train_jsonl")
        ticks: list[tuple[float, dict]] = []

        def on_line(line: str) -> None:
            if line.startswith(LOG_PREFIX):
                ticks.append((time.monotonic(), json.loads(line[len(LOG_PREFIX):])))

        adapter, result = self.work / "adapter", self.work / "train-result.json"
        cmd = [sys.executable, "-m", "ft_pipeline.model.train", "--config", PRESET,
               "--options-json", json.dumps(self.plan["options"]), "--base-dir", self.state["base_dir"],
               "--train-jsonl", self.state["train_jsonl"], "--out", str(adapter), "--result-json", str(result)]
        try:
            self.child("train", cmd, timeout, on_line)
        finally:
            self.state["train_logs"] = report.throughput(ticks)
        res = json.loads(result.read_text())
        self.state["adapter_dir"] = str(adapter)
        return {**res, **self.state["train_logs"]}

    def gpu_tests(self, timeout: float) -> dict:
        xml = self.work / "gpu-tests.xml"
        try:
            self.child("gpu_tests", [sys.executable, "-m", "pytest", "ft_pipeline_tests/test_training_gpu.py", "-q",
                                     "-rA", "-p", "no:cacheprovider", "-o", "addopts=", f"--junitxml={xml}"], timeout)
        finally:
            counts = _junit_counts(xml)
            self.state["gpu_tests"] = counts
        return counts

    def qlora(self, timeout: float) -> dict:
        raise Skipped("QLoRA needs bitsandbytes, whose CUDA wheel alone is larger than the 64 MiB that can be "
                      "copied to the GPU machine; not bundled, not run (test_qlora_preset_trains_on_a_4bit_base "
                      "skips unless that machine has bitsandbytes itself)")

    def run(self) -> int:
        self.step("environment", self.environment)
        self.step("matmul", lambda t: self._into("mm_flops_per_s", "flops_per_s", self.python_step("matmul", t)))
        self.step("base_model", lambda t: self._base(self.python_step("base_model", t)))
        self.step("data", lambda t: self._data(self.python_step("data", t)))
        self.step("train", self.train)
        self.step("padding", lambda t: (self.need("base_dir", "train_jsonl"), self.python_step("padding", t))[1])
        self.step("evaluate", lambda t: (self.need("adapter_dir", "base_dir"), self.python_step("evaluate", t))[1])
        self.step("gpu_tests", self.gpu_tests)
        self.step("qlora", self.qlora)
        summary = report.summarize(self)
        report.write(self.out, summary)
        print(report.markdown(summary), flush=True)  # in the command's output too, should the files not come back
        return 1 if any(s["status"] == "failed" for s in self.steps) else 0

    def _into(self, key: str, field: str, res: dict) -> dict:
        self.state[key] = res[field]
        return res

    def _base(self, res: dict) -> dict:
        self.state.update(base_dir=res["path"], params=res["params"])
        return res

    def _data(self, res: dict) -> dict:
        self.state.update(train_jsonl=str(self.work / "train.jsonl"), holdout_jsonl=str(self.work / "holdout.jsonl"))
        return res


def _junit_counts(xml: Path) -> dict:
    if not xml.is_file():
        return {}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["cases"] = {c.get("name"): ("skipped" if c.find("skipped") is not None else "failed"
                                       if c.find("failure") is not None or c.find("error") is not None else "passed")
                       for c in suite.iter("testcase")}
    return counts


def main() -> int:
    dry = os.environ.get("GPU_CHECK_DRY", "") not in ("", "0")
    out = Path(os.environ.get("OUT") or REPO_ROOT / "gpu-check-out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(dry, out, float(os.environ.get("GPU_CHECK_BUDGET_S", "480")), work)
    print(f"gpu-check: {'dry run (CPU, builtin:tiny)' if dry else 'GPU'}; summary into {out}; work in {work}",
          flush=True)
    try:
        return check.run()
    finally:
        if not os.environ.get("GPU_CHECK_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
