"""The GPU check (ft_pipeline/gpu_check): the bundle holds what the GPU machine lacks at our pins and fits beside the
working tree in 64 MiB; the runner records a failed step and goes on; and the dry run (GPU_CHECK_DRY=1, on this
CPU with builtin:tiny, the GPU machine's missing packages hidden) passes end to end."""

import json
import os
import re
import subprocess
import sys
import time
import zipfile

import pytest

from ft_pipeline.gpu_check import bundle, report
from ft_pipeline.gpu_check.runner import Check, Skipped
from ft_pipeline.settings import REPO_ROOT


def _pyproject_pins() -> dict:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    return {bundle.norm(n): v for n, v in re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', text)}


def test_bundle_holds_the_training_stack_at_our_pins_and_not_the_machines_own():
    pins, ours = bundle.pins(), _pyproject_pins()
    for name in ("trl", "datasets", "peft", "transformers", "accelerate"):
        assert pins[name] == ours[name], name
    assert {"pytest", "orjson", "tokenizers", "huggingface-hub", "dill", "xxhash", "multiprocess"} <= set(pins)
    assert not set(pins) & {"torch", "numpy", "pandas", "pyarrow", "dagster", "mlflow", "bitsandbytes"}


def test_the_dry_run_hides_what_the_gpu_machine_lacks():
    absent = set(bundle.absent_modules())
    assert {"mlflow", "dagster", "sqlalchemy"} <= absent
    assert not absent & {"torch", "transformers", "trl", "datasets", "peft", "yaml", "orjson", "pytest", "ft_pipeline"}


@pytest.fixture
def manifest():
    found = bundle.read_manifest()
    if found is None:
        pytest.skip("no gpu-bundle/ here: `make gpu-bundle` builds it (.ci/run does, before the tests)")
    return found


def test_bundle_fits_beside_the_working_tree_and_is_current(manifest):
    size, tree = bundle.folder_bytes(bundle.BUNDLE_DIR), bundle.tree_bytes()
    assert size + tree < bundle.LIMIT_BYTES, f"bundle {size / 2**20:.1f} MiB + tree {tree / 2**20:.1f} MiB"
    assert manifest["pins"] == bundle.pins(), "gpu-bundle/ is stale: run `make gpu-bundle`"
    assert all((bundle.BUNDLE_DIR / "wheels" / w).is_file() for w in manifest["wheels"])


def test_every_bundled_wheel_finds_what_it_requires(manifest):
    """Each wheel's Requires-Dist (Python 3.12 on Linux) is met by another bundled wheel or by the machine's own
    torch, numpy, pandas or pyarrow: pip could resolve the bundle offline there."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    env = {**bundle._target_env(), "extra": ""}
    have = {**manifest["pins"], **{n: "*" for n in bundle.MACHINE_OWN}}
    problems = []
    for name in manifest["wheels"]:
        with zipfile.ZipFile(bundle.BUNDLE_DIR / "wheels" / name) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            msg = Parser().parsestr(z.read(meta).decode())
        for line in msg.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            got = have.get(bundle.norm(req.name))
            if got is None or (got != "*" and not req.specifier.contains(got, prereleases=True)):
                problems.append(f"{name}: {req} ({got})")
    assert not problems


def _wheel(path, name, version, files):
    with zipfile.ZipFile(path / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return f"{name}-{version}-py3-none-any.whl"


def test_install_unpacks_the_wheels_once_and_refuses_another_python(tmp_path):
    dest = tmp_path / "bundle"
    (dest / "wheels").mkdir(parents=True)
    names = [_wheel(dest / "wheels", "alpha", "1.0", {"alpha/__init__.py": "X = 1\n"}),
             _wheel(dest / "wheels", "beta", "2.0", {"beta-2.0.data/purelib/beta.py": "Y = 2\n"})]
    here = "%d.%d" % sys.version_info[:2]
    manifest = {"python": here, "pins": {"alpha": "1.0", "beta": "2.0"}, "wheels": {n: 1 for n in names}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    site = tmp_path / "site"
    assert bundle.install(dest, site) == {"alpha": "1.0", "beta": "2.0"}
    assert (site / "alpha" / "__init__.py").is_file() and (site / "beta.py").read_text() == "Y = 2\n"
    assert not list(site.glob("*.data"))
    (site / "alpha" / "marker").write_text("")
    bundle.install(dest, site)  # the same manifest: nothing unpacked again
    assert (site / "alpha" / "marker").exists()
    (dest / "manifest.json").write_text(json.dumps({**manifest, "python": "2.7"}))
    with pytest.raises(RuntimeError, match="for Python 2.7"):
        bundle.install(dest, site)


def test_a_failed_step_is_recorded_and_the_next_one_runs(tmp_path):
    check = Check(dry=True, out=tmp_path / "out", budget_s=60, work=tmp_path)

    def boom(timeout):
        raise ValueError("no such thing")

    def later(timeout):
        raise Skipped("needs the adapter")

    check.step("first", boom)
    check.step("second", lambda timeout: {"value": 1})
    check.step("third", later)
    assert [(s["step"], s["status"]) for s in check.steps] == [("first", "failed"), ("second", "ok"),
                                                                ("third", "skipped")]
    assert check.steps[0]["error"] == "ValueError: no such thing"
    assert (tmp_path / "out" / "logs" / "first.traceback.txt").is_file()
    check.deadline = time.monotonic()  # the budget is spent: what is left is skipped, not started
    check.step("fourth", lambda timeout: pytest.fail("ran past the budget"))
    assert check.steps[-1]["status"] == "skipped"
    summary = report.summarize(check)
    report.write(tmp_path / "out", summary)
    assert summary["ok"] is False and summary["failures"] == [{"step": "first", "error": "ValueError: no such thing"}]
    assert "## Failures" in (tmp_path / "out" / "gpu-check.md").read_text()


def test_a_step_past_its_limit_is_killed(tmp_path):
    check = Check(dry=True, out=tmp_path / "out", budget_s=60, work=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="stopped after 3 s"):
        check.child("sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"], 3)
    assert time.monotonic() - t0 < 15
    assert (tmp_path / "out" / "logs" / "sleeper.log").read_text() == "up\n"


def test_throughput_leaves_out_the_time_before_the_first_log():
    logs = [(10.0, {"loss": 3.0, "step": 10, "num_input_tokens_seen": 1000}),
            (12.0, {"loss": 2.5, "step": 20, "num_input_tokens_seen": 3000}),
            (14.0, {"loss": 2.0, "step": 30, "num_input_tokens_seen": 5000}),
            (14.5, {"train_runtime": 9.0, "step": 30})]
    t = report.throughput(logs)
    assert t["steady_tokens_per_s"] == 1000 and t["steady_steps"] == "10-30" and t["steady_s_per_step"] == 0.2
    assert report.throughput(logs[:1]) == {}


@pytest.mark.slow
def test_dry_run_passes_end_to_end(tmp_path):
    """`GPU_CHECK_DRY=1 make gpu-check`'s command: every step runs on this CPU, without MLflow or Dagster."""
    env = {**os.environ, "GPU_CHECK_DRY": "1", "OUT": str(tmp_path / "out")}
    run = subprocess.run([sys.executable, "-m", "ft_pipeline.gpu_check"], env=env, cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=900)
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert run.returncode == 0 and summary["ok"], run.stdout[-3000:] + json.dumps(summary["failures"])
    status = {s["step"]: s["status"] for s in summary["steps"]}
    assert status == {"environment": status["environment"], "matmul": "ok", "base_model": "ok", "data": "ok",
                      "train": "ok", "padding": "ok", "evaluate": "ok", "gpu_tests": "ok", "qlora": "skipped"}
    assert status["environment"] == ("ok" if bundle.read_manifest() else "skipped")
    f = summary["figures"]
    assert f["train_tokens_per_s"] > 0 and 0 < f["mfu"] < 1 and 0.5 < f["padding_efficiency"] <= 1
    assert f["eval_answers_per_s"] > 0 and f["train_steps"] == 6
    assert f["gpu_tests"]["skipped"] == f["gpu_tests"]["tests"] == 3  # no CUDA here
    assert "mean nothing" in (tmp_path / "out" / "gpu-check.md").read_text()
