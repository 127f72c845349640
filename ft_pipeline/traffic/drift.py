"""Drift of production traffic against the training data: what the `traffic_drift` asset measures for one day of
stored completions (by the day they were created).

- unseen share: the share of the day's prompts with no near neighbour in the train set, i.e. no train example
  whose input (system and user messages, `near_dup.input_side`) has an estimated Jaccard similarity of word
  n-grams >= `neighbour_threshold` (the data layer's MinHash signatures and LSH, the split's num_perm and
  ngram; the threshold is lower than the split's near-duplicate one: a neighbour is "about the same thing",
  not "a copy");
- prompt length (words of the input) against the train set's: PSI over the train set's deciles and the
  two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp);
- the answers: the schema-valid rate (answers to requests with a JSON response_format that parse, and match the
  JSON schema when there is one), the share cut at max_tokens (finish_reason `length`), and the mean
  log-probability of their tokens against the holdout's (minus the champion's holdout_loss in the last
  evaluation report: the mean log-probability of the holdout's reference answers' tokens under it).

`flags` compares a report with the thresholds (the preset's ops.traffic_drift.config)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ft_pipeline.data import lsh, near_dup
from ft_pipeline.data.lsh import NearDupParams


@dataclass(frozen=True)
class Thresholds:
    neighbour_threshold: float = 0.3
    max_unseen_share: float = 0.5
    max_length_psi: float = 0.25
    length_ks_alpha: float = 0.001
    # The answers' thresholds; None turns one off (a random model's answers, builtin:tiny's, say nothing).
    max_length_cut_rate: float | None = 0.05
    min_schema_valid_rate: float | None = 0.95
    max_logprob_drop: float | None = 0.25
    min_prompts: int = 5


def input_of(messages: list[dict]) -> list[dict]:
    """A conversation's input as the data layer signs it ("developer" is OpenAI's newer "system")."""
    return near_dup.input_side([{"role": "system" if m["role"] == "developer" else m["role"],
                                 "content": m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])}
                                for m in messages])


def lengths(inputs: list[list[dict]]) -> np.ndarray:
    """Words of each input's messages."""
    return np.array([sum(len(m["content"].split()) for m in x) for x in inputs], dtype=np.float64)


def unseen(day: list[list[dict]], train_sig: np.ndarray, params: NearDupParams) -> np.ndarray:
    """For each of the day's inputs: True when no train input is within the neighbour threshold."""
    if not day:
        return np.zeros(0, dtype=bool)
    sig = near_dup.signatures(day, params)
    hit = np.zeros(len(day), dtype=bool)
    for i, _, _ in lsh.cross_pairs(sig, train_sig, params):
        hit[i] = True
    return ~hit


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, over the reference's quantile bins (empty
    bins floored at 1e-4)."""
    if not len(reference) or not len(current):
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    ref, cur = np.maximum(ref, 1e-4), np.maximum(cur, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def schema_valid(completion: dict) -> bool | None:
    """Whether a JSON answer parses (and matches its schema); None when the request asked for no JSON."""
    fmt = completion.get("response_format") or {}
    if fmt.get("type") not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(completion["answer"])
    except (TypeError, ValueError):
        return False
    schema = (fmt.get("json_schema") or {}).get("schema")
    if schema is None:
        return isinstance(value, dict)
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(value)


def measure(completions: list[dict], train_inputs: list[list[dict]], params: NearDupParams, th: Thresholds,
            reference_logprob: float | None = None) -> dict:
    """The day's drift report (plain numbers; None where there is nothing to measure)."""
    from scipy.stats import ks_2samp

    day = [input_of(c["messages"]) for c in completions]
    nparams = NearDupParams(th.neighbour_threshold, params.num_perm, params.ngram, params.seed)
    train_sig = near_dup.signatures(train_inputs, nparams)
    gone = unseen(day, train_sig, nparams)
    ref_len, day_len = lengths(train_inputs), lengths(day)
    ks = ks_2samp(ref_len, day_len) if len(day_len) and len(ref_len) else None
    valid = [v for v in map(schema_valid, completions) if v is not None]
    lps = [c["mean_logprob"] for c in completions if c.get("mean_logprob") is not None]
    mean_lp = float(np.mean(lps)) if lps else None
    return {
        "prompts": len(day), "train_examples": len(train_inputs), "neighbour_threshold": th.neighbour_threshold,
        "unseen_share": float(gone.mean()) if len(day) else None,
        "unseen_examples": [c["id"] for c, g in zip(completions, gone) if g][:20],
        "length_psi": psi(ref_len, day_len) if len(day) else None,
        "length_ks": float(ks.statistic) if ks else None, "length_ks_pvalue": float(ks.pvalue) if ks else None,
        "prompt_words_mean": float(day_len.mean()) if len(day) else None,
        "train_words_mean": float(ref_len.mean()) if len(ref_len) else None,
        "json_requests": len(valid), "schema_valid_rate": float(np.mean(valid)) if valid else None,
        "length_cut_rate": (sum(c["finish_reason"] == "length" for c in completions) / len(completions)
                            if completions else None),
        "mean_logprob": mean_lp, "holdout_mean_logprob": reference_logprob,
        "logprob_drop": (reference_logprob - mean_lp) if mean_lp is not None and reference_logprob is not None
        else None,
    }


def not_judged(report: dict, th: Thresholds) -> str | None:
    """Why a day is measured but not judged: too few prompts, or no train set to compare with."""
    if report["prompts"] < th.min_prompts:
        return f"{report['prompts']} prompt(s): fewer than min_prompts {th.min_prompts}, not judged"
    if not report["train_examples"]:
        return "no train set yet, not judged"
    return None


def flags(report: dict, th: Thresholds) -> list[str]:
    """What is past its threshold, one line each (nothing for a day that is not judged)."""
    r, out = report, []
    if not_judged(r, th):
        return out
    if r["unseen_share"] > th.max_unseen_share:
        out.append(f"{r['unseen_share']:.0%} of prompts have no near neighbour in train (> {th.max_unseen_share:.0%})")
    if (r["length_psi"] > th.max_length_psi and r["length_ks_pvalue"] is not None
            and r["length_ks_pvalue"] < th.length_ks_alpha):
        out.append(f"prompt lengths shifted: PSI {r['length_psi']:.2f} > {th.max_length_psi}, KS p "
                   f"{r['length_ks_pvalue']:.1e} < {th.length_ks_alpha}")
    if th.max_length_cut_rate is not None and r["length_cut_rate"] > th.max_length_cut_rate:
        out.append(f"{r['length_cut_rate']:.0%} of answers cut at max_tokens (> {th.max_length_cut_rate:.0%})")
    if (th.min_schema_valid_rate is not None and r["schema_valid_rate"] is not None
            and r["schema_valid_rate"] < th.min_schema_valid_rate):
        out.append(f"schema-valid rate {r['schema_valid_rate']:.0%} < {th.min_schema_valid_rate:.0%}")
    if th.max_logprob_drop is not None and r["logprob_drop"] is not None and r["logprob_drop"] > th.max_logprob_drop:
        out.append(f"mean log-probability {r['mean_logprob']:.2f} is {r['logprob_drop']:.2f} below the holdout's "
                   f"{r['holdout_mean_logprob']:.2f} (> {th.max_logprob_drop})")
    return out


def histogram_png(train_words: np.ndarray, day_words: np.ndarray) -> bytes:
    """Prompt lengths of the day against the train set's (densities), as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    top = max(float(np.max(train_words, initial=1)), float(np.max(day_words, initial=1)))
    bins = np.linspace(0, top, 30)
    for words, label in ((train_words, "train"), (day_words, "this day")):
        if len(words):  # an empty side has no density
            ax.hist(words, bins=bins, density=True, alpha=0.5, label=f"{label} ({len(words)})")
    ax.set_xlabel("words in the prompt")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()



def reference_logprob(report: dict | None) -> tuple[float | None, str]:
    """Minus the holdout_loss of the model the evaluation report put forward (its candidate: what was registered,
    so what serves), and which model that was; (None, why) without a report."""
    if not report:
        return None, "no evaluation report yet"
    metrics = report.get("metrics") or {}
    name = (report.get("candidate") or {}).get("name")
    name = name if name in metrics else "champion" if "champion" in metrics else None
    if name is None or metrics[name].get("holdout_loss") is None:
        return None, "the evaluation report has no holdout_loss"
    return -float(metrics[name]["holdout_loss"]), name
