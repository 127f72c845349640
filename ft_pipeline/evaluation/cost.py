"""Was fine-tuning worth it? The prompting baselines beside the base, tuned and champion models on the same
examples, with 95% confidence intervals; the cost per request (prompt tokens, measured seconds) of the best
baseline and of the tuned model, and after how many requests the training paid back; and the gate's
`must_beat_prompting` check.

Intervals: Wilson score intervals for the proportions (json_valid, exact_match); for field accuracy (a mean of
per-example shares of fields) the normal approximation, mean +- 1.96 standard errors, clipped to [0, 1].
Seconds per request are measured on the machine that ran the evaluation, at the evaluation's batch size: the
wall time of a model's generation over the answers it generated (throughput, not one request's latency); an
answer from the cache keeps the time measured when it was generated."""

from __future__ import annotations

import math

Z = 1.96
PROPORTIONS = ("json_valid", "exact_match")
METRICS = ("json_valid", "field_accuracy", "exact_match")


def wilson(successes: float, n: int, z: float = Z) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def mean_ci(values: list[float], z: float = Z) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return 0.0, 1.0
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return max(0.0, mean - z * se), min(1.0, mean + z * se)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summary(per_example: list[dict], idx: list[int] | None = None) -> dict:
    """json_valid, field_accuracy, exact_match with their 95% intervals (`ci`), n, and the mean prompt tokens
    and seconds per request (None where the cache holds answers from before these were recorded), over the rows
    `idx` of a result's per-example rows (all when None)."""
    rows = per_example if idx is None else [per_example[i] for i in idx]
    n = len(rows)
    out = {"n": n, "ci": {}}
    for k in METRICS:
        values = [float(r[k]) for r in rows]
        out[k] = sum(values) / max(n, 1)
        out["ci"][k] = wilson(sum(values), n) if k in PROPORTIONS else mean_ci(values)
    out["prompt_tokens"] = _mean([r.get("prompt_tokens") for r in rows])
    out["seconds_per_request"] = _mean([r.get("seconds") for r in rows])
    return out


def best(rows: dict[str, dict], names: list[str], metric: str) -> str | None:
    """The baseline with the highest `metric`; ties go to the one with fewer prompt tokens, then the earlier."""
    if not names:
        return None
    return max(names, key=lambda n: (rows[n][metric], -(rows[n]["prompt_tokens"] or 0), -names.index(n)))


def cost_table(baseline: str, b: dict, tuned: dict, train_seconds: float | None) -> dict:
    """The arithmetic, with its inputs: prompt tokens and seconds per request of the best baseline and the
    tuned model, what tuning saves per request, the training time, and the requests after which it paid back
    (None: never, when it saves nothing per request, or unknown)."""
    out = {"baseline": baseline, "baseline_prompt_tokens": b["prompt_tokens"], "tuned_prompt_tokens":
           tuned["prompt_tokens"], "baseline_seconds_per_request": b["seconds_per_request"],
           "tuned_seconds_per_request": tuned["seconds_per_request"], "train_seconds": train_seconds,
           "saved_prompt_tokens_per_request": None, "saved_seconds_per_request": None, "payback_requests": None}
    if b["prompt_tokens"] is not None and tuned["prompt_tokens"] is not None:
        out["saved_prompt_tokens_per_request"] = b["prompt_tokens"] - tuned["prompt_tokens"]
    if b["seconds_per_request"] is not None and tuned["seconds_per_request"] is not None:
        saved = out["saved_seconds_per_request"] = b["seconds_per_request"] - tuned["seconds_per_request"]
        if saved > 0 and train_seconds is not None:
            out["payback_requests"] = math.ceil(train_seconds / saved)
    return out


def prompting_failure(baselines: dict | None, candidate: str, metric: str) -> str | None:
    """Why the candidate does not beat the best prompting baseline on `metric` (on the same examples), or None
    when it does. A report without baselines fails: the option asks for a comparison that was not made."""
    if not baselines or not (baselines.get("holdout") or {}).get("baselines"):
        return ("must_beat_prompting is set, but the report has no prompting baselines (baseline_kinds is empty): "
                "re-materialize evaluation_report with baselines")
    rows = baselines["holdout"]["rows"]
    name = best(rows, baselines["holdout"]["baselines"], metric)
    cand = rows.get(candidate)
    if cand is None:
        return f"must_beat_prompting is set, but the report has no {candidate} figures on the baselines' examples"
    if cand[metric] <= rows[name][metric]:
        return (f"{metric.replace('_', ' ')} {cand[metric]:.3f} does not beat the best prompting baseline, {name} "
                f"(the base model prompted, {rows[name][metric]:.3f} on the same {rows[name]['n']} holdout examples)")
    return None


def baselines_report(run: dict, results: dict[str, dict], fixed: dict[str, dict], metric: str,
                     train_seconds: float | None, candidate: str = "tuned") -> dict:
    """The report's `baselines` entry: per set, n and the rows (base, each baseline, the tuned models and the
    champion, all on the baselines' subset), the best baseline on the holdout, and the cost table."""
    out = {"instruction": run["instruction"], "k": run["k"], "schema_note": run["schema_note"], "metric": metric,
           "skipped": run.get("skipped") or {}}
    for set_name, models in (("holdout", results), ("fixed", fixed)):
        idx, done = run["subsets"].get(set_name, []), run["sets"].get(set_name, {})
        if not done:
            continue
        rows = {n: summary(r["per_example"], idx) for n, r in models.items() if n == "base"}
        rows |= {n: summary(r["per_example"]) for n, r in done.items()}
        rows |= {n: summary(r["per_example"], idx) for n, r in models.items() if n != "base"}
        out[set_name] = {"n": len(idx), "of": len(next(iter(models.values()))["per_example"]), "rows": rows,
                         "baselines": list(done)}
    names = out.get("holdout", {}).get("baselines", [])
    out["best"] = best(out["holdout"]["rows"], names, metric) if names else None
    out["cost"] = (cost_table(out["best"], out["holdout"]["rows"][out["best"]], out["holdout"]["rows"][candidate],
                              train_seconds) if out["best"] else None)
    return out


def _fmt(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _cell(row: dict, k: str) -> str:
    lo, hi = row["ci"][k]
    return f"{row[k]:.3f} [{lo:.2f}, {hi:.2f}]"


def table(part: dict) -> list[str]:
    lines = ["| model | n | json_valid | field_accuracy | exact_match | prompt tokens | s / request |",
             "|---|---|---|---|---|---|---|"]
    for name, row in part["rows"].items():
        label = "base (zero-shot, no instruction)" if name == "base" else name
        lines.append(f"| {label} | {row['n']} | {_cell(row, 'json_valid')} | {_cell(row, 'field_accuracy')} | "
                     f"{_cell(row, 'exact_match')} | {_fmt(row['prompt_tokens'], 0)} | "
                     f"{_fmt(row['seconds_per_request'])} |")
    return lines


def cost_lines(c: dict | None) -> list[str]:
    if not c:
        return []
    lines = ["", f"**Cost per request: the best baseline ({c['baseline']}) against the tuned model**", "",
             "| | best baseline | tuned | saved per request |", "|---|---|---|---|",
             f"| prompt tokens | {_fmt(c['baseline_prompt_tokens'], 0)} | {_fmt(c['tuned_prompt_tokens'], 0)} | "
             f"{_fmt(c['saved_prompt_tokens_per_request'], 0)} |",
             f"| seconds | {_fmt(c['baseline_seconds_per_request'])} | {_fmt(c['tuned_seconds_per_request'])} | "
             f"{_fmt(c['saved_seconds_per_request'])} |", ""]
    t, saved = c["train_seconds"], c["saved_seconds_per_request"]
    if t is None or saved is None:
        lines.append("Payback: unknown (no training time or no measured seconds).")
    elif c["payback_requests"] is None:
        lines.append(f"Payback: never on this machine: training took {t:.0f} s and the tuned model saves nothing "
                     f"per request ({saved:+.3f} s).")
    else:
        lines.append(f"Payback: training took {t:.0f} s; {t:.0f} s / {saved:.3f} s saved per request = "
                     f"**{c['payback_requests']:,} requests** on this machine.")
    return lines


def markdown(b: dict | None) -> list[str]:
    """The report's section: the baselines table per set, the cost table, what the baselines were."""
    if not b or "holdout" not in b:
        return []
    h = b["holdout"]
    lines = ["", "### Was fine-tuning worth it? Prompting baselines", "",
             f"The base model prompted instead of tuned, on the same {h['n']} of {h['of']} holdout examples (a "
             "fixed, seeded subset) as every other row here. 95% intervals: Wilson for json_valid and exact_match, "
             "normal approximation for field_accuracy. Seconds per request: measured wall time at the evaluation's "
             "batch size over the answers generated (from the cache: as measured then).", ""]
    lines += table(h)
    if b.get("best"):
        lines += ["", f"Best prompting baseline on {b['metric']}: **{b['best']}**."]
    lines += cost_lines(b.get("cost"))
    if "fixed" in b:
        lines += ["", f"On {b['fixed']['n']} of {b['fixed']['of']} hand-written examples:", ""] + table(b["fixed"])
    lines += ["", f"Instruction (system message): {b['instruction'][:600]}"]
    ran = h["baselines"]
    if f"few_shot_{b['k']}" in ran:
        lines.append(f"few_shot_{b['k']}: the same {b['k']} training examples for every request.")
    if f"dynamic_{b['k']}" in ran:
        lines.append(f"dynamic_{b['k']}: each request's {b['k']} nearest training examples by MinHash Jaccard of "
                     "the user message, nearest last.")
    lines += [f"{name}: skipped, {why}." for name, why in (b.get("skipped") or {}).items()]
    if b.get("schema_note"):
        lines.append(b["schema_note"][0].upper() + b["schema_note"][1:] + ".")
    return lines


def mlflow_metrics(b: dict | None) -> dict[str, float]:
    """`baseline/<name>/<metric>` (holdout subset; `fixed/` for the hand-written set) and `cost/<figure>`."""
    out: dict[str, float] = {}
    if not b:
        return out
    for set_name, prefix in (("holdout", "baseline"), ("fixed", "fixed_baseline")):
        for name, row in (b.get(set_name) or {}).get("rows", {}).items():
            for k in (*METRICS, "prompt_tokens", "seconds_per_request"):
                if row.get(k) is not None:
                    out[f"{prefix}/{name}/{k}"] = float(row[k])
            out[f"{prefix}/{name}/n"] = float(row["n"])
    for k, v in (b.get("cost") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"cost/{k}"] = float(v)
    return out


def console_lines(b: dict | None) -> list[str]:
    """The baselines and the cost line for `make run`'s summary."""
    if not b or "holdout" not in b:
        return []
    h, metric = b["holdout"], b["metric"]
    lines = [f"prompting baselines ({metric}, {h['n']} of {h['of']} holdout examples, 95% interval):"]
    for name, row in h["rows"].items():
        lo, hi = row["ci"][metric]
        tokens, secs = _fmt(row["prompt_tokens"], 0), _fmt(row["seconds_per_request"])
        lines.append(f"  {name:28s}{row[metric]:9.3f}  [{lo:.2f}, {hi:.2f}]  {tokens:>5s} prompt tokens  "
                     f"{secs} s/request")
    c = b.get("cost")
    if c and c["saved_seconds_per_request"] is not None and c["train_seconds"] is not None:
        payback = (f"paid back after {c['payback_requests']:,} requests" if c["payback_requests"] is not None
                   else "never pays back on this machine")
        lines.append(f"cost: tuning saves {c['saved_seconds_per_request']:.3f} s and "
                     f"{_fmt(c['saved_prompt_tokens_per_request'], 0)} prompt tokens per request against "
                     f"{c['baseline']}; training took {c['train_seconds']:.0f} s: {payback}")
    return lines
