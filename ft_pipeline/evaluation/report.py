"""The evaluation report: metrics side by side, samples, the champion diff and the retention check, as
markdown for the Dagster UI and as MLflow metrics, tables and figures."""

from __future__ import annotations

from ft_pipeline.evaluation import constrained as cons
from ft_pipeline.evaluation import cost
from ft_pipeline.evaluation.scoring import prompt_messages, reference


def samples(records: list[dict], results: dict[str, dict], n: int = 8) -> list[dict]:
    """The first `n` holdout examples with every model's answer, for the report and the samples table."""
    return [{"prompt": prompt_messages(r)[-1]["content"], "reference": reference(r),
             **{name: res["per_example"][i]["prediction"] for name, res in results.items()}}
            for i, r in enumerate(records[:n])]


def log_to_mlflow(results: dict[str, dict], report_md: str, sample_rows: list[dict], diff: dict | None,
                  figures: dict, model_id: str | None, fixed: dict[str, dict] | None = None,
                  retention: dict | None = None, candidate: str = "tuned") -> None:
    """Into the active MLflow run: every model's metrics, the gate candidate's metrics on its LoggedModel, the
    report, the samples and champion-diff tables, and the figures."""
    import mlflow

    for name, r in results.items():
        mlflow.log_metrics({f"{name}.{k}": v for k, v in r["metrics"].items()})
    mlflow.log_metrics({f"eval.{k}": v for k, v in results[candidate]["metrics"].items()}, model_id=model_id)
    for name, r in (fixed or {}).items():
        mlflow.log_metrics({f"fixed.{name}.{k}": v for k, v in r["metrics"].items()})
    for name, kl in ((retention or {}).get("kl") or {}).items():
        mlflow.log_metric(f"retention.{name}.kl", kl)
    mlflow.log_text(report_md, "evaluation.md")
    mlflow.log_table({k: [s[k] for s in sample_rows] for k in ["prompt", "reference", *results]}, "samples.json")
    if diff is not None:
        mlflow.log_metrics({f"vs_champion.{k}": v for k, v in diff["counts"].items()})
        if diff["rows"]:
            mlflow.log_table({k: [r[k] for r in diff["rows"]] for k in diff["rows"][0]}, "champion_diff.json")
    for name, fig in figures.items():
        mlflow.log_figure(fig, name)


REPORT_KEYS = ["json_valid", "field_accuracy", "exact_match", "chrf", "rouge_l", "holdout_loss", "perplexity"]


def _esc(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")[:160]


def diff_markdown(diff: dict | None, champion_version: str | None, shown: int = 3) -> list[str]:
    lines = ["", "### Against the champion", ""]
    if diff is None:
        return lines + ["No champion yet: nothing to compare against."]
    c, n = diff["counts"], len(diff["rows"])
    lines.append(f"Versus champion version {champion_version} on the same {n} examples: **{c['better']} better, "
                 f"{c['worse']} worse, {c['same']} the same** (by field accuracy, then exact match, then chrF).")
    for change in ("better", "worse"):
        picked = [r for r in diff["rows"] if r["change"] == change][:shown]
        if picked:
            lines += ["", f"{change.capitalize()} (first {len(picked)}):", "",
                      "| # | prompt | reference | champion | tuned |", "|---|---|---|---|---|"]
            lines += [f"| {r['index']} | {_esc(r['prompt'])} | {_esc(r['reference'])} | {_esc(r['champion'])} | "
                      f"{_esc(r['tuned'])} |" for r in picked]
    return lines


def fixed_markdown(fixed: dict[str, dict] | None, name: str) -> list[str]:
    if not fixed:
        return []
    names = list(fixed)
    n = len(next(iter(fixed.values()))["per_example"])
    lines = ["", f"### {name}: {n} hand-written messages, never trained on", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in ("json_valid", "field_accuracy", "exact_match"):
        lines.append(f"| {k} | " + " | ".join(f"{fixed[m]['metrics'][k]:.3f}" for m in names) + " |")
    return lines


def retention_markdown(retention: dict | None) -> list[str]:
    if not retention:
        return []
    lines = ["", "### Retention: did it forget?", "",
             f"Mean per-token KL(base || model) on the base model's own greedy answers to {retention['prompts']} "
             "general prompts (facts, arithmetic, writing, code, advice). 0 = predicts exactly what the base "
             "predicts.", "", "| model | retention KL |", "|---|---|"]
    lines += [f"| {name} | {kl:.4f} |" for name, kl in retention["kl"].items()]
    if retention.get("side_by_side"):
        lines += ["", "| prompt | base | tuned |", "|---|---|---|"]
        lines += [f"| {_esc(r['prompt'])} | {_esc(r['base'])} | {_esc(r['tuned'])} |"
                  for r in retention["side_by_side"]]
    return lines


def preference_markdown(pair_accuracy: dict[str, float] | None, candidate: dict | None) -> list[str]:
    lines = []
    if pair_accuracy:
        lines += ["", "### Pair accuracy on the holdout preference pairs", "",
                  "The share of pairs where the model finds the chosen answer likelier than the rejected one.", "",
                  "| model | pair accuracy |", "|---|---|"] + [f"| {n} | {v:.3f} |" for n, v in pair_accuracy.items()]
    if candidate:
        lines += ["", f"**Goes to the gate: the {candidate['stage'].upper()} model** ({candidate['why']})."]
    return lines


def markdown_report(results: dict[str, dict], n_examples: int, samples: list[dict], diff: dict | None = None,
                    champion_version: str | None = None, fixed: dict[str, dict] | None = None,
                    fixed_name: str = "Fixed set", retention: dict | None = None,
                    pair_accuracy: dict[str, float] | None = None, candidate: dict | None = None,
                    baselines: dict | None = None, constrained: dict | None = None) -> str:
    """A report a person reads in the Dagster UI: metrics side by side, a few holdout samples, and what got
    better and worse than the champion; with `constrained` (constrained.report), the answers under the output
    schema beside the free ones."""
    names = list(results)
    lines = [f"## Evaluation on {n_examples} holdout examples", "",
             "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in REPORT_KEYS:
        lines.append(f"| {k} | " + " | ".join(f"{results[n]['metrics'][k]:.3f}" for n in names) + " |")
    lines.append("")
    lines.append("chrf is sentence chrF2 on a 0-100 scale; rouge_l is ROUGE-L F1 on 0-1; both are means over examples."
                 + (" tuned is the SFT adapter; dpo is it after preference tuning." if "dpo" in results else ""))
    lines += cons.markdown(constrained, fixed_name)
    lines += preference_markdown(pair_accuracy, candidate)
    lines += cost.markdown(baselines)
    lines += ["", "### Samples", "", "| prompt | reference | " + " | ".join(names) + " |",
              "|---|---|" + "---|" * len(names)]
    for s in samples:
        lines.append(f"| {_esc(s['prompt'])} | {_esc(s['reference'])} | "
                     + " | ".join(_esc(s[n]) for n in names) + " |")
    lines += fixed_markdown(fixed, fixed_name)
    lines += retention_markdown(retention)
    lines += diff_markdown(diff, champion_version)
    return "\n".join(lines)
