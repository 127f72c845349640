"""The one line format every benchmark prints: `BENCH <name> <value> <unit> goal <op><goal> PASS|FAIL`,
or `goal - INFO` for a figure that has no goal.

Ratios are measured side by side in one process and one run: the machine is shared and noisy, so absolute times
are not comparable between runs."""

from __future__ import annotations

import operator

_OPS = {">=": operator.ge, "<=": operator.le}


def bench_line(name: str, value: float, unit: str, op: str, goal: float) -> bool:
    ok = _OPS[op](value, goal)
    print(f"BENCH {name} {value:.4g} {unit} goal {op}{goal:g} {'PASS' if ok else 'FAIL'}", flush=True)
    return ok


def info_line(name: str, value: float, unit: str) -> None:
    """A figure with no goal (what a user gains, not a bar to pass): `goal - INFO`, never counted as a miss."""
    print(f"BENCH {name} {value:.4g} {unit} goal - INFO", flush=True)
