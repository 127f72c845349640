"""`python -m bench` (what `make bench` runs): every bench/bench_*.py in its own process, one after another.

Each script prints its BENCH lines; this runner exits non-zero when a script fails or any figure misses its goal.
`python -m bench data` runs only bench_data.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in argv]
    failed = []
    for script in scripts:
        print(f"# {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        sys.stdout.write(proc.stdout)
        misses = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ") and line.endswith(" FAIL")]
        if proc.returncode != 0 or misses:
            failed.append(script.name)
    if failed:
        print(f"# below goal or failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
