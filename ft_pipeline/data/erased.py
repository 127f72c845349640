"""Rows an erasure request names (erasure/requests.py) as the data stage reads them: kept as their provenance and
request id, without their text, so that every drop still reconciles (rows in = kept + quarantined + duplicates +
erased)."""

from __future__ import annotations

import json

MARKER = "ft_pipeline_erased"  # the key of a line that --redact-source wrote in place of an erased row


def redacted_marker(raw: str) -> str | None:
    """The request id of a row that --redact-source rewrote, or None."""
    if MARKER not in raw:
        return None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return data.get(MARKER) if isinstance(data, dict) else None


def mark_erased(records, erased: dict[str, str]):
    """Canonical records with every erased row replaced by its provenance and request id, without its text."""
    for rec in records:
        req = erased.get(rec["raw_sha256"]) or redacted_marker(rec.get("raw", ""))
        if req is not None:
            rec = {k: rec[k] for k in ("drop", "line", "format", "raw_sha256")} | {"erased": req}
        yield rec
