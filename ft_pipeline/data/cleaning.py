"""Turn a parsed drop into cleaned canonical records, a quarantine and a list of removed duplicates.

Accounting is exact: every input row ends in exactly one of kept, quarantined, duplicates or erased (a row an
erasure request names: erasure/requests.py)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ft_pipeline.data import conflicts, dedup
from ft_pipeline.data.bulk import batches, chunked, no_cycle_gc
from ft_pipeline.data.dedup import duplicate_entry, repoint
from ft_pipeline.data.formats import ParsedDrop, RowError, to_messages
from ft_pipeline.data.keys import as_uint64, example_id, example_keys, near_dup_key, near_dup_keys  # noqa: F401
from ft_pipeline.data.near_dup import NearDupParams

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3}[ .-]?\d{3,4}(?!\d)")
_SPACES = re.compile(r"[\t\u00a0]|[ \t\u00a0]{2,}")  # what "runs of spaces become one space" changes
_TRAILING_WS = re.compile(r"[^\S\n]+(?=\n|\x00|\Z)")
_SEP = "\x00"  # no pattern here can match across it, and it is not whitespace: texts are joined with it


@dataclass
class CleaningOptions:
    redact_pii: bool = True
    max_chars: int = 4000  # a row longer than this (all messages together) is quarantined, never truncated
    near_dup: NearDupParams | None = field(default_factory=NearDupParams)  # None: exact and normalized only
    conflicts: str = "keep"  # rows with one input and different answers: keep, quarantine or latest


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
    conflicts: list[dict] = field(default_factory=list)  # label conflicts: each row with its answer and outcome

    @property
    def quarantine_reasons(self) -> Counter:
        return Counter(q["code"] for q in self.quarantined)

    def stats(self) -> dict:
        return {"rows_in": self.rows_in, "kept": self.kept_count, "quarantined": len(self.quarantined),
                "duplicates": len(self.duplicates), "erased": len(self.erased),
                "duplicates_by_kind": dict(Counter(d["kind"] for d in self.duplicates)),
                "quarantined_by_reason": dict(self.quarantine_reasons),
                "pii_redacted_by_kind": dict(self.pii_counts), "conflicts": len(self.conflicts),
                "conflict_rows": sum(len(c["rows"]) for c in self.conflicts)}


def normalize_text(text: str) -> str:
    """NFC, Unix line ends, no trailing spaces, runs of spaces collapsed, outer whitespace stripped."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(_SPACES.sub(" ", ln).rstrip() for ln in text.split("\n")).strip()


@chunked
def normalize_many(texts: list[str]) -> list[str]:
    """`normalize_text` of each text, done as a few C-level passes over all of them joined (the same result)."""
    joined = _SEP.join(texts)
    if joined.count(_SEP) != max(len(texts) - 1, 0):  # a text holds the separator itself: one at a time
        return [normalize_text(t) for t in texts]
    joined = unicodedata.normalize("NFC", joined).replace("\r\n", "\n").replace("\r", "\n")
    joined = _TRAILING_WS.sub("", _SPACES.sub(" ", joined))
    return [t.strip() for t in joined.split(_SEP)] if texts else []


@chunked
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


SERVED = ("completion_id", "answered_by")  # a reviewed_traffic row's provenance, kept into the MLflow lineage


def served_provenance(data: Any) -> dict:
    """The stored completion a raw row was written from (traffic/reviewed.py) and NAME/VERSION that answered it;
    {} for any other row."""
    if not isinstance(data, dict) or not isinstance(data.get("completion_id"), str):
        return {}
    out = {"completion_id": data["completion_id"]}
    if data.get("registered_model") and data.get("version") is not None:
        out["answered_by"] = f"{data['registered_model']}/{data['version']}"
    return out


def iter_canonical(parsed: ParsedDrop, fmt: str, convert: Callable[[Any, str], dict] | None = None) -> Iterator[dict]:
    """One record per input row: its provenance and original text, and either chat `messages` or the reason
    (`code`, `reason`) it could not be converted, and for a row written from a stored completion its
    `served_provenance`. `convert(data, fmt)`, raising RowError, gives other fields in place of `messages`
    (preference pairs: preference/pair_formats.py)."""
    for row in parsed.rows:
        rec = {"drop": parsed.drop, "line": row.line, "format": fmt,
               "raw_sha256": hashlib.sha256(row.text.encode("utf-8", errors="replace")).hexdigest(), "raw": row.text}
        try:
            if row.error:
                raise RowError(row.code or "unparseable", row.error)
            rec.update({"messages": to_messages(row.data, fmt)} if convert is None else convert(row.data, fmt))
            rec.update(served_provenance(row.data))
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
    records, or their JSONL lines, str or bytes (parsed by the workers). A duplicate always has the answer of
    the row it duplicates (normalized: case, punctuation and whitespace aside); near is measured on the input
    (system and user messages). Rows with one input and different answers are a label conflict, reported in
    `conflicts` and kept, quarantined or replaced as `options.conflicts` says (data/conflicts.py).

    Each chunk's per-row work (parse, normalize, redact, ids and keys, MinHash signatures) is independent of
    the others, so `workers` processes do it side by side (None: one per CPU, at most 4; 0 or 1, or a single
    chunk: this process); this process takes their results in order and does what depends on the rows before:
    exact and normalized dedup, then the label conflicts, then the MinHash/LSH pass over every signature.
    Memory stays at a few chunks plus, per kept row, its signature, two keys and the fields a duplicate entry
    names; kept candidates go to a side file first and are copied to `kept_path` once the MinHash pass has run."""
    from ft_pipeline.data import lsh
    from ft_pipeline.jsonl import loads

    opts = options or CleaningOptions()
    if opts.conflicts not in conflicts.CONFLICTS:
        raise ValueError(f"conflicts must be one of {', '.join(conflicts.CONFLICTS)}, got {opts.conflicts!r}")
    out = CleanedDrop()
    seen: dict[str, int] = {}  # normalized key and answer key -> the candidate kept for it
    refs: list[tuple] = []  # per candidate: (id, drop, line, raw_sha256), what a duplicate entry names
    dup_of: list[int] = []  # per duplicate entry: the candidate it duplicates
    sigs, input_keys, answer_keys = [], [], []
    cand_path = kept_path.with_name(kept_path.name + ".candidates")
    raw_path = kept_path.with_name(kept_path.name + ".raw")  # conflicts=quarantine: rows' text, for the quarantine
    with no_cycle_gc(), open(cand_path, "wb") as f, \
            (open(raw_path, "wb") if opts.conflicts == "quarantine" else nullcontext()) as raw_f:
        for prep in _prepared_chunks(batches(rows, chunk_rows or CHUNK_ROWS), opts, workers):
            out.rows_in += prep["rows"]
            out.quarantined += prep["quarantined"]
            out.erased += prep["erased"]
            out.pii_counts.update(prep["pii"])
            keep, kept_lines = [], []
            for ref, key, line in zip(prep["refs"], prep["dup_keys"], prep["lines"]):
                first = seen.get(key)
                if first is not None:  # an exact copy has the same keys too: one lookup for a row that is new
                    exact = refs[first][0] == ref[0]
                    out.duplicates.append(duplicate_entry(_ref(ref), _ref(refs[first]), "exact" if exact else "near",
                                                          "exact" if exact else "normalized"))
                    dup_of.append(first)
                    keep.append(False)
                    continue
                seen[key] = len(refs)
                kept_lines.append(line)
                refs.append(ref)
                keep.append(True)
            f.writelines(kept_lines)
            mask = np.array(keep, dtype=bool)
            input_keys.append(prep["input_keys"][mask])
            answer_keys.append(prep["answer_keys"][mask])
            if opts.near_dup is not None:
                sigs.append(prep["signatures"][mask])
            if raw_f:
                raw_f.writelines(prep["raws"])
    del seen
    answers = np.concatenate(answer_keys) if answer_keys else np.zeros(0, dtype=np.uint64)
    settled = dedup.settle(opts.conflicts, lambda i: _ref(refs[i]),
                           np.concatenate(input_keys) if input_keys else answers, answers, out.duplicates, dup_of)
    del dup_of, input_keys, answer_keys
    out.duplicates, keep = settled.duplicates, settled.alive
    if opts.near_dup is not None:
        sig = np.concatenate(sigs) if sigs else np.zeros((0, opts.near_dup.num_perm), dtype=np.uint32)
        live = np.flatnonzero(keep)
        near, sim = lsh.dedup(sig[live], opts.near_dup, groups=answers[live])
        removed = [duplicate_entry(_ref(refs[live[i]]), _ref(refs[live[near[i]]]), "near", "minhash", sim[i])
                   for i in np.flatnonzero(near >= 0).tolist()]
        out.duplicates = repoint(out.duplicates, removed) + removed
        keep[live[near >= 0]] = False
        out.signatures = sig[keep]
    out.duplicates.sort(key=lambda d: d["line"])
    out.kept_count = int(keep.sum())
    members = {m for group in settled.groups for _, m, _ in group}
    lines = {}  # the cleaned records of the conflicts' candidates, for their answers
    if keep.all() and not members:
        cand_path.replace(kept_path)
    else:
        tmp = kept_path.with_name(kept_path.name + ".tmp")
        with open(cand_path, "rb") as src, open(tmp, "wb") as dst:
            for i, (text, k) in enumerate(zip(src, keep.tolist())):
                if k:
                    dst.write(text)
                if i in members:
                    lines[i] = loads(text)
        tmp.replace(kept_path)
        cand_path.unlink()
    out.conflicts = [conflicts.report([r for r, _, _ in group], [o for _, _, o in group],
                                      [conflicts.answer(lines[m]["messages"]) for _, m, _ in group],
                                      conflicts.input_text(lines[group[0][1]]["messages"]))
                     for group in settled.groups]
    if raw_f is not None:
        out.quarantined = sorted(out.quarantined + _with_raw(settled.quarantine, raw_path), key=lambda q: q["line"])
    return out


def _ref(ref: tuple) -> dict:
    return dict(zip(("id", "drop", "line", "raw_sha256"), ref))


def _with_raw(rows: list[tuple[dict, list[dict]]], raw_path: Path) -> list[dict]:
    """The quarantine entries of conflicting rows, each with its original text from the side file."""
    from ft_pipeline.jsonl import loads

    wanted = {(r["line"], r["raw_sha256"]) for r, _ in rows}
    raws = {}
    with open(raw_path, "rb") as f:
        for text in f if wanted else ():
            line, sha, raw = loads(text)
            if (line, sha) in wanted:
                raws[line, sha] = raw
    raw_path.unlink()
    return [conflicts.quarantine_entry(r, others, raw=raws.get((r["line"], r["raw_sha256"]))) for r, others in rows]


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
    long), and for each other row in order its reference (id, drop, line, raw_sha256), dedup key (normalized
    key and answer key), input and answer keys (uint64) and cleaned JSONL line (UTF-8), with the personal data
    counts, when near-dup is on the MinHash signatures of the rows' inputs, and with conflicts=quarantine their
    original text. Columns of plain tuples, bytes and arrays: they cross back from a worker process cheaply."""
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
        keys, fitting_messages = example_keys(fitting), iter(fitting)
        refs, lines, raws = [], [], []
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
            near_key, input_key, answer_key = keys[len(lines)]
            rec = {"id": rid, "near_key": near_key, "input_key": input_key, "answer_key": answer_key, **base,
                   "format": row["format"], "messages": messages, **{k: row[k] for k in SERVED if k in row}}
            refs.append((rid, base["drop"], base["line"], base["raw_sha256"]))
            lines.append(line(rec))
            if opts.conflicts == "quarantine":
                raws.append(line([base["line"], base["raw_sha256"], row["raw"]]))
        sig = (near_dup.signatures(map(near_dup.input_side, fitting), opts.near_dup) if opts.near_dup is not None
               else None)
    return {"rows": len(records) + len(erased), "erased": erased, "quarantined": quarantined, "pii": pii,
            "refs": refs, "dup_keys": [k[0] + k[2] for k in keys], "input_keys": as_uint64([k[1] for k in keys]),
            "answer_keys": as_uint64([k[2] for k in keys]), "lines": lines, "signatures": sig, "raws": raws}
