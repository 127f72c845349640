"""Turn a parsed drop into cleaned canonical records, a quarantine and a list of removed duplicates.

Accounting is exact: every input row ends in exactly one of kept, quarantined, duplicates or erased (a row an
erasure request names: erasure/requests.py)."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ft_pipeline.data.bulk import batches, no_cycle_gc
from ft_pipeline.data.formats import ParsedDrop, RowError, to_messages
from ft_pipeline.data.near_dup import NearDupParams

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3}[ .-]?\d{3,4}(?!\d)")
_PUNCT_WS = re.compile(r"[\W_]+", re.UNICODE)
_SPACES = re.compile(r"[\t\u00a0]|[ \t\u00a0]{2,}")  # what "runs of spaces become one space" changes
_TRAILING_WS = re.compile(r"[^\S\n]+(?=\n|\x00|\Z)")
_SEP = "\x00"  # no pattern here can match across it, and it is not whitespace: texts are joined with it


@dataclass
class CleaningOptions:
    redact_pii: bool = True
    max_chars: int = 4000  # a row longer than this (all messages together) is quarantined, never truncated
    near_dup: NearDupParams | None = field(default_factory=NearDupParams)  # None: exact and normalized only


@dataclass
class CleanedDrop:
    kept: list[dict] = field(default_factory=list)  # filled by clean_records only; clean_stream writes a file
    kept_count: int = 0
    quarantined: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    erased: list[dict] = field(default_factory=list)  # drop, line, raw_sha256 and request id; never the text
    rows_in: int = 0
    pii_counts: Counter = field(default_factory=Counter)
    signatures: object = None  # MinHash signatures of `kept` (numpy, one row each), for the split to reuse

    @property
    def quarantine_reasons(self) -> Counter:
        return Counter(q["code"] for q in self.quarantined)

    def stats(self) -> dict:
        return {"rows_in": self.rows_in, "kept": self.kept_count, "quarantined": len(self.quarantined),
                "duplicates": len(self.duplicates), "erased": len(self.erased),
                "duplicates_by_kind": dict(Counter(d["kind"] for d in self.duplicates)),
                "quarantined_by_reason": dict(self.quarantine_reasons),
                "pii_redacted_by_kind": dict(self.pii_counts)}


def normalize_text(text: str) -> str:
    """NFC, Unix line ends, no trailing spaces, runs of spaces collapsed, outer whitespace stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_SPACES.sub(" ", ln).rstrip() for ln in text.split("\n")).strip()


_CHUNK = 4096  # texts joined at once: bounds the joined copies (4 bytes a character once one text has an emoji)


def _chunked(fn):
    """Apply a batch function to a long list a chunk at a time: the same result, bounded memory."""
    def run(texts: list, *args):
        if len(texts) <= _CHUNK:
            return fn(texts, *args)
        return [x for i in range(0, len(texts), _CHUNK) for x in fn(texts[i:i + _CHUNK], *args)]
    run.__doc__ = fn.__doc__
    return run


@_chunked
def normalize_many(texts: list[str]) -> list[str]:
    """`normalize_text` of each text, done as a few C-level passes over all of them joined (the same result)."""
    joined = _SEP.join(texts)
    if joined.count(_SEP) != max(len(texts) - 1, 0):  # a text holds the separator itself: one at a time
        return [normalize_text(t) for t in texts]
    joined = unicodedata.normalize("NFC", joined).replace("\r\n", "\n").replace("\r", "\n")
    joined = _TRAILING_WS.sub("", _SPACES.sub(" ", joined))
    return [t.strip() for t in joined.split(_SEP)] if texts else []


@_chunked
def redact_many(texts: list[str], counts: Counter) -> list[str]:
    """`redact` of each text, done as one pass per pattern over the texts that can match it, joined (the same
    result: no pattern can match the separator, and the lookarounds see it as the start or end of a text)."""
    if _SEP in "".join(texts):
        return [redact(t, counts) for t in texts]
    out = list(texts)
    for kind, pattern, valid, possible in _REDACTIONS:
        idx = [i for i, t in enumerate(out) if possible(t)]
        if idx:
            done = pattern.sub(_redactor(kind, valid, counts), _SEP.join(out[i] for i in idx)).split(_SEP)
            for i, t in zip(idx, done):
                out[i] = t
    return out


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


_DIGITS = b"0123456789"
_IBAN_HINT = re.compile(r"[A-Z]{2}\d{2}")


def _digits(text: str) -> int:
    b = text.encode("utf-8", "surrogatepass")
    return len(b) - len(b.translate(None, _DIGITS))


# (kind, pattern, validator, necessary condition): a text failing the condition cannot match the pattern, so
# the batch form skips it without changing the result; regex scanning is the cost of redaction.
_REDACTIONS = (
    ("EMAIL", _EMAIL, None, lambda t: "@" in t),
    ("IBAN", _IBAN, _iban_ok, lambda t: _IBAN_HINT.search(t) is not None),
    ("CARD", _CARD, lambda s: _luhn_ok(re.sub(r"\D", "", s)), lambda t: _digits(t) >= 13),
    ("PHONE", _PHONE, None, lambda t: _digits(t) >= 8),
)


def _redactor(kind, valid, counts):
    def repl(m):
        if valid and not valid(m.group(0)):
            return m.group(0)
        counts[kind] += 1
        return f"[{kind}]"
    return repl


def redact(text: str, counts: Counter) -> str:
    """Replace emails, IBANs, card numbers (Luhn-valid) and phone numbers with [KIND] placeholders."""
    for kind, pattern, valid, _ in _REDACTIONS:
        text = pattern.sub(_redactor(kind, valid, counts), text)
    return text


_json_str = json.encoder.encode_basestring  # a str as a JSON string, ensure_ascii=False (C-accelerated)
# ASCII letters and digits stay, every other ASCII byte (punctuation, "_", whitespace) becomes a space, and the
# separator stays itself: for ASCII text, the words _PUNCT_WS leaves.
_ASCII_WORDS = bytes(b if chr(b).isalnum() or b == 0 else 0x20 for b in range(128)) + bytes(range(128, 256))
_PUNCT_WS_BATCH = re.compile(r"[^\w\x00]+")  # _PUNCT_WS once "_" is a space, not crossing the separator


def example_id(messages: list[dict]) -> str:
    """Stable id of a normalized example: the same conversation always has the same id (sha256 of the compact
    JSON [[role, content], ...], assembled from the C string encoder json.dumps itself uses)."""
    blob = "[" + ",".join(f"[{_json_str(m['role'])},{_json_str(m['content'])}]" for m in messages) + "]"
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def near_dup_key(messages: list[dict]) -> str:
    """Key that two near-identical examples share: case, punctuation and whitespace do not count."""
    parts = [m["role"] + ":" + _PUNCT_WS.sub(" ", m["content"].casefold()).strip() for m in messages]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


@_chunked
def near_dup_keys(examples: list[list[dict]]) -> list[str]:
    """`near_dup_key` of each example, with the punctuation pass done once over all contents joined."""
    contents = [m["content"] for msgs in examples for m in msgs]
    joined = _SEP.join(contents)
    if joined.count(_SEP) != max(len(contents) - 1, 0):
        return [near_dup_key(msgs) for msgs in examples]
    if joined.isascii():  # the common case: a byte translation, not a Unicode regex (the same words)
        folded = iter(" ".join(t.split()) for t in joined.lower().encode().translate(_ASCII_WORDS).decode()
                      .split(_SEP))
    else:
        folded = iter(_PUNCT_WS_BATCH.sub(" ", joined.casefold().replace("_", " ")).split(_SEP))
    return [hashlib.sha256("\x1f".join(m["role"] + ":" + next(folded).strip() for m in msgs).encode())
            .hexdigest()[:16] for msgs in examples]


def iter_canonical(parsed: ParsedDrop, fmt: str, convert: Callable[[Any, str], dict] | None = None) -> Iterator[dict]:
    """One record per input row: its provenance and original text, and either chat `messages` or the reason
    (`code`, `reason`) it could not be converted. `convert(data, fmt)`, raising RowError, gives other fields in
    place of `messages` (preference pairs: preference/pair_formats.py)."""
    for row in parsed.rows:
        rec = {"drop": parsed.drop, "line": row.line, "format": fmt,
               "raw_sha256": hashlib.sha256(row.text.encode("utf-8", errors="replace")).hexdigest(), "raw": row.text}
        try:
            if row.error:
                raise RowError(row.code or "unparseable", row.error)
            if convert is None:
                rec["messages"] = to_messages(row.data, fmt)
            else:
                rec.update(convert(row.data, fmt))
        except RowError as e:
            rec.update(code=e.code, reason=str(e))
        yield rec


def canonicalize(parsed: ParsedDrop, fmt: str) -> list[dict]:
    """`iter_canonical` as a list."""
    with no_cycle_gc():
        return list(iter_canonical(parsed, fmt))


CHUNK_ROWS = 16384  # rows cleaned at once: bounds memory to a chunk of records plus a few small fields a row


def clean_records(records: list[dict], options: CleaningOptions | None = None) -> CleanedDrop:
    """`clean_stream` of a list, with the kept records read back into `kept`."""
    import tempfile

    from ft_pipeline.jsonl import read_jsonl

    with tempfile.TemporaryDirectory(prefix="ft_clean_") as tmp:
        out = clean_stream(records, Path(tmp) / "kept.jsonl", options)
        out.kept = read_jsonl(Path(tmp) / "kept.jsonl")
    return out


def clean_stream(rows: Iterable[dict | str | bytes], kept_path: Path, options: CleaningOptions | None = None,
                 chunk_rows: int | None = None, workers: int | None = None) -> CleanedDrop:
    """Quarantine unusable rows, normalize, redact personal data, and drop exact and near duplicates, a chunk
    of rows at a time; the kept records are written to `kept_path` (JSONL), not returned. `rows` are canonical
    records, or their JSONL lines, str or bytes (parsed by the workers).

    Each chunk's per-row work (parse, normalize, redact, ids, MinHash signatures) is independent of the others,
    so `workers` processes do it side by side (None: one per CPU, at most 4; 0 or 1, or a single chunk: this
    process); this process takes their results in order and does what depends on the rows before: exact and
    normalized dedup, then the MinHash/LSH pass over every signature. Memory stays at a few chunks plus, per
    kept row, its signature and the fields a duplicate entry names; kept candidates go to a side file first and
    are copied to `kept_path` once the MinHash pass has run."""
    from ft_pipeline.data import lsh

    opts = options or CleaningOptions()
    out = CleanedDrop()
    seen_exact: dict[str, tuple] = {}  # example id -> the kept example's reference
    seen_near: dict[str, tuple] = {}  # normalized key -> the same
    refs: list[tuple] = []  # per written candidate: (id, drop, line, raw_sha256), what a duplicate entry names
    sigs = []
    cand_path = kept_path.with_name(kept_path.name + (".candidates" if opts.near_dup else ".tmp"))
    with no_cycle_gc(), open(cand_path, "wb") as f:
        for prep in _prepared_chunks(batches(rows, chunk_rows or CHUNK_ROWS), opts, workers):
            out.rows_in += prep["rows"]
            out.quarantined += prep["quarantined"]
            out.erased += prep["erased"]
            out.pii_counts.update(prep["pii"])
            keep, kept_lines = [], []
            for ref, key, line in zip(prep["refs"], prep["near_keys"], prep["lines"]):
                # An exact copy has the same normalized key too: one lookup for a row that is new.
                first = seen_near.get(key)
                if first is not None:
                    exact = seen_exact.get(ref[0])
                    out.duplicates.append(duplicate_entry(_ref(ref), _ref(exact or first), "exact" if exact else "near",
                                                          "exact" if exact else "normalized"))
                    keep.append(False)
                    continue
                seen_exact[ref[0]] = seen_near[key] = ref
                kept_lines.append(line)
                refs.append(ref)
                keep.append(True)
            f.writelines(kept_lines)
            if opts.near_dup is not None:
                sigs.append(prep["signatures"][np.array(keep, dtype=bool)])
    del seen_exact, seen_near
    if opts.near_dup is None:
        out.kept_count = len(refs)
        cand_path.replace(kept_path)
        return out
    sig = np.concatenate(sigs) if sigs else np.zeros((0, opts.near_dup.num_perm), dtype=np.uint32)
    dup_of, sim = lsh.dedup(sig, opts.near_dup)
    removed = [duplicate_entry(_ref(refs[i]), _ref(refs[dup_of[i]]), "near", "minhash", sim[i])
               for i in np.flatnonzero(dup_of >= 0).tolist()]
    out.duplicates = sorted(repoint(out.duplicates, removed) + removed, key=lambda d: d["line"])
    out.signatures = sig[dup_of < 0]
    keep = (dup_of < 0).tolist()
    tmp = kept_path.with_name(kept_path.name + ".tmp")
    with open(cand_path, "rb") as src, open(tmp, "wb") as dst:
        dst.writelines(line for line, k in zip(src, keep) if k)
    out.kept_count = int(sum(keep))
    tmp.replace(kept_path)
    cand_path.unlink()
    return out


def _ref(ref: tuple) -> dict:
    return dict(zip(("id", "drop", "line", "raw_sha256"), ref))


def _prepared_chunks(chunks: Iterator[list], opts: CleaningOptions, workers: int | None) -> Iterator[dict]:
    """`_prepare_chunk` of each chunk, in order: here when there is one chunk or one worker, otherwise in a
    pool of worker processes with a few chunks in flight (so memory stays bounded however long the input)."""
    import os
    from collections import deque

    workers = min(os.cpu_count() or 1, 4) if workers is None else workers
    head = list(islice(chunks, 2))
    if len(head) < 2 or workers <= 1:
        for chunk in chain(head, chunks):
            yield _prepare_chunk(chunk, opts)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a fork of a process with threads (a Dagster step has several) can deadlock in the child.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = deque(pool.submit(_prepare_chunk, c, opts) for c in head)
        for chunk in chunks:
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
            pending.append(pool.submit(_prepare_chunk, chunk, opts))
        while pending:
            yield pending.popleft().result()


def _prepare_chunk(rows: list[dict | str | bytes], opts: CleaningOptions) -> dict:
    """The per-row work on one chunk, which depends on no other row: quarantined rows (unconvertible or too
    long), and for each other row in order its reference (id, drop, line, raw_sha256), normalized key and
    cleaned JSONL line (UTF-8), with the personal data counts and, when near-dup is on, the rows' MinHash
    signatures. Columns of plain tuples and bytes: they cross back from a worker process cheaply."""
    from ft_pipeline.data import near_dup
    from ft_pipeline.jsonl import line, loads

    with no_cycle_gc():
        records = [r if isinstance(r, dict) else loads(r) for r in rows]
        erased = [{**{k: r[k] for k in ("drop", "line", "raw_sha256")}, "request": r["erased"]} for r in records
                  if "erased" in r]
        records = [r for r in records if "erased" not in r]
        pii: Counter = Counter()
        quarantined = []
        # Normalize and redact every content of the chunk in a few passes over the joined text, not row by row.
        usable = [row for row in records if "messages" in row]
        normed = iter(normalize_many([m["content"] for row in usable for m in row["messages"]]))
        normed_rows = {id(row): [next(normed) for _ in row["messages"]] for row in usable}
        n_chars = {key: sum(map(len, texts)) for key, texts in normed_rows.items()}
        fits = [c for row in usable if n_chars[id(row)] <= opts.max_chars for c in normed_rows[id(row)]]
        redacted = iter(redact_many(fits, pii) if opts.redact_pii else fits)
        fitting = [[{**m, "content": next(redacted)} for m in row["messages"]] for row in usable
                   if n_chars[id(row)] <= opts.max_chars]
        near_keys, fitting_messages = near_dup_keys(fitting), iter(fitting)
        refs, lines = [], []
        for row in records:
            base = {k: row[k] for k in ("drop", "line", "raw_sha256")}
            if "messages" not in row:
                quarantined.append({**base, "code": row["code"], "reason": row["reason"], "raw": row["raw"]})
                continue
            if (n := n_chars[id(row)]) > opts.max_chars:
                quarantined.append({**base, "code": "too_long", "raw": row["raw"],
                                    "reason": f"too long: {n} characters, the limit is {opts.max_chars} "
                                              "(raise max_chars or shorten the example; rows are never truncated)"})
                continue
            messages = next(fitting_messages)
            rid = example_id(messages)
            rec = {"id": rid, "near_key": near_keys[len(lines)], **base, "format": row["format"],
                   "messages": messages}
            refs.append((rid, base["drop"], base["line"], base["raw_sha256"]))
            lines.append(line(rec))
        sig = near_dup.signatures(fitting, opts.near_dup) if opts.near_dup is not None else None
    return {"rows": len(records) + len(erased), "erased": erased, "quarantined": quarantined, "pii": pii,
            "refs": refs, "near_keys": near_keys,
            "lines": lines, "signatures": sig}


def duplicate_entry(rec: dict, first: dict, kind: str, method: str, similarity: float = 1.0) -> dict:
    """What a removed duplicate records: itself, how it was matched, and the kept example it duplicates."""
    return {"drop": rec["drop"], "line": rec["line"], "raw_sha256": rec.get("raw_sha256"), "kind": kind,
            "method": method, "similarity": round(float(similarity), 4), "id": rec["id"],
            "duplicate_of": {k: first[k] for k in ("id", "drop", "line")}}


def repoint(duplicates: list[dict], removed: list[dict]) -> list[dict]:
    """Duplicates that pointed at an example the MinHash pass then removed point at the example that one
    duplicates instead, so `duplicate_of` always names a kept example."""
    to = {d["id"]: d["duplicate_of"] for d in removed}
    return [{**d, "duplicate_of": to[d["duplicate_of"]["id"]]} if d["duplicate_of"]["id"] in to else d
            for d in duplicates]
