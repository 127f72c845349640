"""The wheels the GPU machine lacks, built here by `make gpu-bundle` into gpu-bundle/ (git-ignored, carried to it).

That machine has Python 3.12, torch built for CUDA, transformers, peft, accelerate, pandas, pyarrow, safetensors and
tqdm (with what they require), no package registry and no Hub. The bundle holds, for CPython 3.12 on manylinux
x86_64, every distribution that the check's code paths require at this project's versions (the installed
development environment's: pyproject.toml's pins and what pip resolved beside them), found by walking their
Requires-Dist from ROOTS, less the machine's own builds (MACHINE_OWN: torch, which must stay the machine's CUDA
build, and the numeric stack compiled against it). On the machine, `install` unpacks them into a folder put first
on PYTHONPATH: the versions tested here shadow the machine's older transformers and peft, torch stays its own.

Stdlib only at import (the check's runner imports this on the bare machine); `packaging` is imported where markers
are evaluated (here, at build time). `python -m ft_pipeline.gpu_check.bundle build|size|absent` is what the
Makefile calls."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = REPO_ROOT / "gpu-bundle"
LIMIT_BYTES = 64 * 1024 * 1024  # the working tree plus the carried folders, as the device machine takes them
# What the check runs needs: the training stack at our pins, the data stage, the presets' YAML, the gpu test tier.
ROOTS = ("trl", "datasets", "peft", "transformers", "accelerate", "safetensors", "tqdm", "orjson",
         "charset-normalizer", "pyyaml", "pytest")
# Never bundled: the machine's CUDA torch and the compiled numeric stack (pyarrow alone is ~40 MB).
MACHINE_OWN = ("torch", "numpy", "pandas", "pyarrow")
# What issue 27 says that machine has (each with what it requires). Everything else is absent there.
MACHINE_HAS = ("torch", "transformers", "peft", "accelerate", "pandas", "pyarrow", "safetensors", "tqdm", "numpy")
PYTHON = "3.12"
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")
# Left out on purpose (the summary says so): Dagster and MLflow (the check trains through the framework-free entry
# point and needs neither), bitsandbytes (its CUDA wheel alone is larger than what can be copied).
NOT_BUNDLED = ("dagster", "mlflow", "bitsandbytes")


def norm(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _target_env() -> dict:
    from packaging.markers import default_environment

    return {**default_environment(), "python_version": PYTHON, "python_full_version": PYTHON + ".0",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
            "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def requirements(name: str) -> list[str]:
    """The distributions `name` (as installed here) requires on the target, extras left out."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    env = _target_env()
    out = []
    for line in distribution(name).requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            out.append(norm(req.name))
    return out


def closure(roots, stop=()) -> dict[str, str]:
    """{name: installed version} of `roots` and everything they require, not entering `stop`; names not installed
    here are skipped (a requirement of another platform's build)."""
    from importlib.metadata import PackageNotFoundError, version

    stop = {norm(s) for s in stop}
    found: dict[str, str] = {}
    todo = [norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or name in stop:
            continue
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
        todo.extend(requirements(name))
    return dict(sorted(found.items()))


def pins() -> dict[str, str]:
    return closure(ROOTS, MACHINE_OWN)


def build(dest: Path = BUNDLE_DIR) -> dict:
    """Download the bundle's wheels (cp312, manylinux x86_64, no dependencies: the list is the closure) into
    dest/wheels, remove stale ones, and write dest/manifest.json."""
    want = pins()
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    req.write_text("".join(f"{n}=={v}\n" for n, v in want.items()))
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp" + PYTHON.replace(".", ""),
           *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(wheels), "-r", str(req)]
    subprocess.run(cmd, check=True)
    files = {}
    for whl in sorted(wheels.glob("*.whl")):
        name, ver = wheel_name(whl)
        if want.get(name) == ver:
            files[whl.name] = whl.stat().st_size
        else:
            whl.unlink()  # another version from an earlier build
    missing = sorted(set(want) - {wheel_name(wheels / f)[0] for f in files})
    if missing:
        raise SystemExit(f"gpu-bundle: no wheel downloaded for {missing}")
    manifest = {"python": PYTHON, "platforms": list(PLATFORMS), "pins": want, "wheels": files,
                "not_bundled": {"machine's own": list(MACHINE_OWN), "left out": list(NOT_BUNDLED)}}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def wheel_name(whl: Path) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name."""
    name, ver = whl.name.split("-")[:2]
    return norm(name), ver


def read_manifest(dest: Path = BUNDLE_DIR) -> dict | None:
    path = dest / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def tree_bytes(repo: Path = REPO_ROOT) -> int:
    """The working tree as the device machine copies it: tracked files and untracked ones git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout.decode()
    return sum((repo / f).stat().st_size for f in set(out.split("\0")) if f and (repo / f).is_file())


def install(dest: Path, target: Path) -> dict[str, str]:
    """Unpack every wheel of the bundle into `target` (what `pip install --no-deps --target` does, without pip),
    once per manifest; returns the pins. Fails on a Python the wheels are not for."""
    manifest = read_manifest(dest)
    if manifest is None:
        raise FileNotFoundError(f"no {dest}/manifest.json: build the bundle here with `make gpu-bundle` and carry "
                                "gpu-bundle to the GPU machine")
    here = "%d.%d" % sys.version_info[:2]
    if here != manifest["python"]:
        raise RuntimeError(f"the bundle's wheels are for Python {manifest['python']}, this is Python {here}")
    stamp = target / ".manifest.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest:
        return manifest["pins"]
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in manifest["wheels"]:
        with zipfile.ZipFile(dest / "wheels" / name) as z:
            z.extractall(target)
    for data in target.glob("*.data"):  # a wheel's purelib/platlib parts belong at the top, the rest is unused
        for part in ("purelib", "platlib"):
            if (data / part).is_dir():
                shutil.copytree(data / part, target, dirs_exist_ok=True)
        shutil.rmtree(data)
    stamp.write_text(json.dumps(manifest))
    return manifest["pins"]


def absent_modules() -> list[str]:
    """Top-level modules installed here whose every distribution is absent on the GPU machine (neither in
    MACHINE_HAS with what it requires, nor in the bundle): the dry run hides them (dry_site/sitecustomize.py)."""
    from importlib.metadata import packages_distributions

    allowed = set(closure(MACHINE_HAS)) | set(pins()) | {"ft-pipeline"}
    return sorted(mod for mod, dists in packages_distributions().items()
                  if mod.isidentifier() and not any(norm(d) in allowed for d in dists))


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "build"
    if cmd == "build":
        manifest = build(BUNDLE_DIR)
        size, tree = folder_bytes(BUNDLE_DIR), tree_bytes()
        print(f"gpu-bundle: {len(manifest['wheels'])} wheels, {size / 2**20:.1f} MiB; with the working tree "
              f"({tree / 2**20:.1f} MiB) {(size + tree) / 2**20:.1f} MiB of the {LIMIT_BYTES / 2**20:.0f} MiB "
              "the GPU machine takes")
        return 0 if size + tree < LIMIT_BYTES else 1
    if cmd == "absent":
        print("\n".join(absent_modules()))
        return 0
    raise SystemExit(f"usage: python -m ft_pipeline.gpu_check.bundle build|absent (not {cmd!r})")


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    sys.exit(main(sys.argv[1:]))
