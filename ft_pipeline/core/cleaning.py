"""Turn a parsed drop into cleaned canonical records, a quarantine and a list of removed duplicates.

Accounting is exact: every input row ends in exactly one of kept, quarantined or duplicates."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from ft_pipeline.core.formats import ParsedDrop, RowError, to_messages
from ft_pipeline.core.near_dup import NearDupParams

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3}[ .-]?\d{3,4}(?!\d)")
_PUNCT_WS = re.compile(r"[\W_]+", re.UNICODE)
_SPACES = re.compile(r"[ \t\u00a0]+")


@dataclass
class CleaningOptions:
    redact_pii: bool = True
    max_chars: int = 4000  # a row longer than this (all messages together) is quarantined, never truncated
    near_dup: NearDupParams | None = field(default_factory=NearDupParams)  # None: exact and normalized only


@dataclass
class CleanedDrop:
    kept: list[dict] = field(default_factory=list)
    quarantined: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    rows_in: int = 0
    pii_counts: Counter = field(default_factory=Counter)

    @property
    def quarantine_reasons(self) -> Counter:
        return Counter(q["code"] for q in self.quarantined)

    def stats(self) -> dict:
        return {"rows_in": self.rows_in, "kept": len(self.kept), "quarantined": len(self.quarantined),
                "duplicates": len(self.duplicates),
                "duplicates_by_kind": dict(Counter(d["kind"] for d in self.duplicates)),
                "quarantined_by_reason": dict(self.quarantine_reasons),
                "pii_redacted_by_kind": dict(self.pii_counts)}


def normalize_text(text: str) -> str:
    """NFC, Unix line ends, no trailing spaces, runs of spaces collapsed, outer whitespace stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_SPACES.sub(" ", ln).rstrip() for ln in text.split("\n")).strip()


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    num = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(num) % 97 == 1


def redact(text: str, counts: Counter) -> str:
    """Replace emails, IBANs, card numbers (Luhn-valid) and phone numbers with [KIND] placeholders."""

    def sub(pattern, kind, valid=None):
        def repl(m):
            if valid and not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return f"[{kind}]"
        return lambda t: pattern.sub(repl, t)

    for step in (sub(_EMAIL, "EMAIL"), sub(_IBAN, "IBAN", _iban_ok),
                 sub(_CARD, "CARD", lambda s: _luhn_ok(re.sub(r"\D", "", s))), sub(_PHONE, "PHONE")):
        text = step(text)
    return text


def example_id(messages: list[dict]) -> str:
    """Stable id of a normalized example: the same conversation always has the same id."""
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def near_dup_key(messages: list[dict]) -> str:
    """Key that two near-identical examples share: case, punctuation and whitespace do not count."""
    parts = [m["role"] + ":" + _PUNCT_WS.sub(" ", m["content"].casefold()).strip() for m in messages]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def canonicalize(parsed: ParsedDrop, fmt: str) -> list[dict]:
    """One record per input row: its provenance and original text, and either chat `messages` or the reason
    (`code`, `reason`) it could not be converted."""
    out = []
    for row in parsed.rows:
        rec = {"drop": parsed.drop, "line": row.line, "format": fmt,
               "raw_sha256": hashlib.sha256(row.text.encode("utf-8", errors="replace")).hexdigest(), "raw": row.text}
        try:
            if row.error:
                raise RowError(row.code or "unparseable", row.error)
            rec["messages"] = to_messages(row.data, fmt)
        except RowError as e:
            rec.update(code=e.code, reason=str(e))
        out.append(rec)
    return out


def clean_records(records: list[dict], options: CleaningOptions | None = None) -> CleanedDrop:
    """Quarantine unusable rows, normalize, redact personal data, and drop exact and near duplicates."""
    opts = options or CleaningOptions()
    out = CleanedDrop(rows_in=len(records))
    seen_exact: dict[str, dict] = {}
    seen_near: dict[str, dict] = {}
    for row in records:
        base = {k: row[k] for k in ("drop", "line", "raw_sha256")}
        if "messages" not in row:
            out.quarantined.append({**base, "code": row["code"], "reason": row["reason"], "raw": row["raw"]})
            continue
        messages = [{**m, "content": normalize_text(m["content"])} for m in row["messages"]]
        n_chars = sum(len(m["content"]) for m in messages)
        if n_chars > opts.max_chars:
            out.quarantined.append({**base, "code": "too_long", "raw": row["raw"],
                                    "reason": f"too long: {n_chars} characters, the limit is {opts.max_chars} "
                                              "(raise max_chars or shorten the example; rows are never truncated)"})
            continue
        if opts.redact_pii:
            messages = [{**m, "content": redact(m["content"], out.pii_counts)} for m in messages]
        rec = {"id": example_id(messages), "near_key": near_dup_key(messages), **base,
               "format": row["format"], "messages": messages}
        first = seen_exact.get(rec["id"]) or seen_near.get(rec["near_key"])
        if first is not None:
            out.duplicates.append(duplicate_entry(rec, first, "exact" if rec["id"] in seen_exact else "near",
                                                  "exact" if rec["id"] in seen_exact else "normalized"))
            continue
        seen_exact[rec["id"]] = rec
        seen_near[rec["near_key"]] = rec
        out.kept.append(rec)
    if opts.near_dup is not None:
        out.kept, more = remove_near_duplicates(out.kept, opts.near_dup)
        out.duplicates = sorted(repoint(out.duplicates, more) + more, key=lambda d: d["line"])
    return out


def duplicate_entry(rec: dict, first: dict, kind: str, method: str, similarity: float = 1.0) -> dict:
    """What a removed duplicate records: itself, how it was matched, and the kept example it duplicates."""
    return {"drop": rec["drop"], "line": rec["line"], "raw_sha256": rec.get("raw_sha256"), "kind": kind,
            "method": method, "similarity": round(float(similarity), 4), "id": rec["id"],
            "duplicate_of": {k: first[k] for k in ("id", "drop", "line")}}


def remove_near_duplicates(kept: list[dict], params: NearDupParams) -> tuple[list[dict], list[dict]]:
    """MinHash/LSH pass over examples in order: (still kept, removed as near-duplicates of an earlier kept one)."""
    from ft_pipeline.core import near_dup

    sig = near_dup.signatures((r["messages"] for r in kept), params)
    dup_of, sim = near_dup.dedup(sig, params)
    removed = [duplicate_entry(r, kept[d], "near", "minhash", s)
               for r, d, s in zip(kept, dup_of.tolist(), sim.tolist()) if d >= 0]
    return [r for r, d in zip(kept, dup_of.tolist()) if d < 0], removed


def repoint(duplicates: list[dict], removed: list[dict]) -> list[dict]:
    """Duplicates that pointed at an example the MinHash pass then removed point at the example that one
    duplicates instead, so `duplicate_of` always names a kept example."""
    to = {d["id"]: d["duplicate_of"] for d in removed}
    return [{**d, "duplicate_of": to[d["duplicate_of"]["id"]]} if d["duplicate_of"]["id"] in to else d
            for d in duplicates]
