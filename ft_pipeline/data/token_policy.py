"""Token-length policy: measure every example with the base model's tokenizer and chat template (exactly what
training will see) and quarantine, or fail on, what is longer than training's `max_length`. Never truncate."""

from __future__ import annotations

import io

import numpy as np

ON_TOO_LONG = ("quarantine", "fail")


class TooManyTokensError(ValueError):
    """`on_too_long="fail"` and some examples are longer than `max_tokens`: the message names them."""


def count_tokens(examples: list[list[dict]], tokenizer, batch: int = 512) -> np.ndarray:
    """Tokens of each conversation rendered with the tokenizer's chat template (special tokens included)."""
    counts = np.zeros(len(examples), dtype=np.int64)
    for i in range(0, len(examples), batch):
        texts = tokenizer.apply_chat_template(examples[i:i + batch], tokenize=False)
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        counts[i:i + batch] = [len(x) for x in ids]
    return counts


def too_long(counts: np.ndarray, max_tokens: int, on_too_long: str, where) -> np.ndarray:
    """Mask of the examples longer than `max_tokens`. With on_too_long="fail" and any such example, raise
    TooManyTokensError naming the first few by `where(i)` (e.g. "drop line 7")."""
    if on_too_long not in ON_TOO_LONG:
        raise ValueError(f"on_too_long must be one of {ON_TOO_LONG}, got {on_too_long!r}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    over = counts > max_tokens
    if over.any() and on_too_long == "fail":
        idx = np.flatnonzero(over)
        named = ", ".join(f"{where(int(i))} ({int(counts[i])} tokens)" for i in idx[:5])
        more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
        raise TooManyTokensError(f"{len(idx)} example(s) longer than max_tokens={max_tokens}: {named}{more}; "
                                 "set on_too_long='quarantine' to leave them out instead")
    return over


def too_long_entry(rec: dict, tokens: int, max_tokens: int) -> dict:
    """The quarantine entry of a too-long example: where it came from, its length and why it is out."""
    return {"drop": rec["drop"], "line": rec["line"], "id": rec["id"], "raw_sha256": rec.get("raw_sha256"),
            "tokens": tokens, "max_tokens": max_tokens, "code": "too_many_tokens",
            "reason": f"{tokens} tokens with the base model's chat template, the limit is {max_tokens} "
                      "(training's max_length); raise max_tokens or shorten the example, it is never truncated",
            "messages": rec["messages"]}


def length_summary(counts: np.ndarray) -> dict:
    if not len(counts):
        return {"examples": 0}
    return {"examples": int(len(counts)), "tokens_p50": round(float(np.percentile(counts, 50)), 2),
            "tokens_p95": round(float(np.percentile(counts, 95)), 2), "tokens_max": int(counts.max()),
            "tokens_mean": round(float(counts.mean()), 2)}


def histogram_png(counts: np.ndarray, max_tokens: int, title: str = "Tokens per example") -> bytes:
    """A PNG histogram of token counts with the max_tokens limit drawn in."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must come before pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    try:
        ax.hist(counts, bins=min(60, max(10, len(np.unique(counts)))), color="#4c72b0")
        ax.axvline(max_tokens, color="#c44e52", linestyle="--", label=f"max_tokens = {max_tokens}")
        if len(counts):
            ax.axvline(np.percentile(counts, 95), color="#55a868", linestyle=":", label="p95")
        ax.set_xlabel("tokens (chat template applied)")
        ax.set_ylabel("examples")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
