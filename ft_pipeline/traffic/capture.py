"""A completion as it is stored: OpenAI's metadata limits, personal data redacted with the data layer's rules,
and the verdict that a metadata update records."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ft_pipeline.data.cleaning import redact

# OpenAI's limits on `metadata` (chat completions, and every other object that has it).
MAX_PAIRS, MAX_KEY, MAX_VALUE = 16, 64, 512
# The verdicts a review records; "corrected" always comes with a correction.
VERDICTS = ("accepted", "corrected", "rejected")


class MetadataError(ValueError):
    """Metadata outside OpenAI's limits (HTTP 400, with the parameter it concerns)."""

    def __init__(self, message: str, param: str = "metadata"):
        super().__init__(message)
        self.param = param


def check_metadata(value: Any, param: str = "metadata") -> dict[str, str]:
    """`value` as metadata: a JSON object of at most 16 string pairs, keys at most 64 characters and values at
    most 512; None is no metadata. MetadataError names what is wrong."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MetadataError(f"Invalid '{param}': expected an object of string key-value pairs, got "
                            f"{type(value).__name__}.", param)
    if len(value) > MAX_PAIRS:
        raise MetadataError(f"Invalid '{param}': too many keys ({len(value)}); at most {MAX_PAIRS} are allowed.",
                            param)
    for k, v in value.items():
        if len(k) > MAX_KEY:
            raise MetadataError(f"Invalid '{param}': key '{k[:20]}...' is {len(k)} characters long; keys are at most "
                                f"{MAX_KEY}.", param)
        if not isinstance(v, str):
            raise MetadataError(f"Invalid '{param}.{k}': metadata values must be strings, got {type(v).__name__}.",
                                f"{param}.{k}")
        if len(v) > MAX_VALUE:
            raise MetadataError(f"Invalid '{param}.{k}': the value is {len(v)} characters long; values are at most "
                                f"{MAX_VALUE}.", f"{param}.{k}")
    return dict(value)


def verdict_from_metadata(md: dict[str, str]) -> tuple[str, str | None] | None:
    """The verdict a metadata update records: `correction: TEXT` → corrected (whatever `review` says), else
    `review: accepted|rejected`; None when the update says nothing about a review (the verdict stays).
    `review: corrected` without a correction keeps the correction recorded before (None here). The correction
    comes back redacted (it is training text); `md` itself is left as it is (`redact_metadata` redacts every
    value of it, and counts what it replaced, where it is stored)."""
    correction = md.get("correction")
    if correction is not None and correction.strip():
        return "corrected", redact_text(correction)
    review = md.get("review")
    if review is None:
        return None
    if review not in VERDICTS:
        raise MetadataError(f"Invalid 'metadata.review': '{review[:40]}' is not a verdict; use one of "
                            f"{', '.join(VERDICTS)} (or send 'correction').", "metadata.review")
    return review, None


def redact_metadata(metadata: dict[str, str], counts: Counter) -> dict[str, str]:
    """Metadata with every value redacted as the messages are (a value is user text: a correction, a comment,
    an email address); what was replaced is added to `counts`. Keys are the application's names, kept."""
    return {k: redact(v, counts) for k, v in metadata.items()}


def redact_completion(messages: list[dict], answer: str, metadata: dict[str, str] | None = None
                      ) -> tuple[list[dict], str, dict[str, str], dict[str, int]]:
    """Messages, answer and metadata values with emails, IBANs, card numbers and phone numbers replaced by
    [KIND] (the data layer's `redact`, as a drop is cleaned), and how many of each kind were replaced."""
    counts: Counter = Counter()
    out = [{**m, "content": redact(m["content"], counts)} for m in messages]
    answer = redact(answer, counts)
    return out, answer, redact_metadata(metadata or {}, counts), dict(counts)


def record(*, id: str, created: int, model: str, registered_model: str, version: str, messages: list[dict],
           answer: str, finish_reason: str, prompt_tokens: int, completion_tokens: int, latency_ms: float,
           mean_logprob: float | None, metadata: dict[str, str], response_format: Any = None,
           params: dict | None = None, requested: bool = True) -> dict:
    """The row `CompletionStore.insert` takes, redacted (metadata values too); a verdict already in the metadata
    is recorded too."""
    messages, answer, metadata, counts = redact_completion(messages, answer, metadata)
    rec = {"id": id, "created": created, "model": model, "registered_model": registered_model, "version": version,
           "messages": messages, "answer": answer, "response_format": response_format,
           "finish_reason": finish_reason, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "latency_ms": latency_ms, "mean_logprob": mean_logprob, "metadata": metadata, "redactions": counts,
           "params": params or {}, "requested": requested,
           "review": None, "correction": None, "reviewer": None, "reviewed_at": None}
    if (verdict := verdict_from_metadata(metadata)) is not None:
        review, correction = verdict
        if review == "corrected" and correction is None:
            raise MetadataError("Invalid 'metadata.review': 'corrected' needs a 'correction'.", "metadata.review")
        rec.update(review=review, correction=correction, reviewer=metadata.get("reviewer") or "api",
                   reviewed_at=int(time.time()))
    return rec


def redact_text(text: str | None) -> str | None:
    """A correction is training text too: redacted as the answer was."""
    return None if text is None else redact(text, Counter())
