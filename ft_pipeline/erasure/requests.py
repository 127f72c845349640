"""Erasure requests: forget a raw row, everywhere the pipeline put it.

A request names rows by the sha256 of the raw row (what provenance records), never by their text, and is kept
as one JSON line in `<home>/erasure/requests.jsonl`. From there it propagates:
- raw_examples writes an erased row without its text, and cleaning counts it as `erased`, so every drop still
  reconciles (rows in = kept + quarantined + duplicates + erased);
- the erasure list is part of raw_examples' data version (and the erased rows of a drop part of cleaned_examples'),
  so the drops are re-ingested and the model retrains;
- `scrub` removes what is not regenerated: the derived files' lines, evaluation cache entries and evaluation
  reports (under the home and as MLflow artifacts) that hold an erased row's text;
- registered versions trained on an erased row are tagged (`erasure_tags`)."""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from pathlib import Path

from ft_pipeline.data import cleaning, formats
from ft_pipeline.data.erased import MARKER
from ft_pipeline.evaluation import cache as eval_cache


class ErasureError(ValueError):
    """A request that cannot be made (no such row, no such drop): one line for the person who asked."""


def requests_path(home: Path) -> Path:
    return Path(home) / "erasure" / "requests.jsonl"


def load_requests(home: Path) -> list[dict]:
    path = requests_path(home)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def erased_hashes(home: Path) -> dict[str, str]:
    """{raw_sha256: id of the first request that erased it}."""
    out: dict[str, str] = {}
    for req in load_requests(home):
        for row in req["rows"]:
            out.setdefault(row["raw_sha256"], req["id"])
    return out


def digest(hashes) -> str:
    return hashlib.sha256(",".join(sorted(hashes)).encode()).hexdigest()


def raw_data_version(file_sha256: str, erased: dict[str, str]) -> str:
    """raw_examples' data version: the file's hash, and the erasure list once there is one (so that a request
    re-ingests every drop, the erased row of a drop that another drop repeats included)."""
    if not erased:
        return file_sha256[:16]
    return hashlib.sha256(f"{file_sha256}:{digest(erased)}".encode()).hexdigest()[:16]


def cleaned_data_version(cleaned_sha256: str, erased_rows: list[dict]) -> str:
    """cleaned_examples' data version: the cleaned file's hash, and the drop's erased rows when it has any."""
    if not erased_rows:
        return cleaned_sha256[:16]
    return hashlib.sha256(f"{cleaned_sha256}:{digest(r['raw_sha256'] for r in erased_rows)}".encode()
                          ).hexdigest()[:16]


def _texts(rec: dict) -> list[str]:
    """The user and assistant texts of a canonical record or preference pair (its raw text when it has none)."""
    if "messages" in rec:
        messages = rec["messages"]
    elif "prompt" in rec:
        messages = rec["prompt"] + rec["chosen"] + rec["rejected"]
    else:
        return [rec["raw"]]
    return [m["content"] for m in messages if m["role"] in ("user", "assistant")]


PREFERENCES = "preferences"  # the raw folder's subfolder of preference drops (defs/preference.py)


def _all_drops(raw_dir: Path) -> list[tuple[str, str, Path, bool]]:
    """(drop, file, path, is_preference) of every drop: the SFT drops in the raw folder, then the preference
    drops in its preferences/, named `preferences/<key>` and `preferences/<file name>` as lineage names them."""
    from ft_pipeline.data.drop_files import find_drops

    sft, _ = formats.find_drops(Path(raw_dir))
    pref, _ = find_drops(Path(raw_dir) / PREFERENCES)
    return ([(k, p.name, p, False) for k, p in sorted(sft.items())]
            + [(f"{PREFERENCES}/{k}", f"{PREFERENCES}/{p.name}", p, True) for k, p in sorted(pref.items())])


def _names(drop: str, file: str) -> set[str]:
    """What a person may call a drop: its partition key or file name, for a preference drop also without the
    folder."""
    return {drop, file, drop.removeprefix(f"{PREFERENCES}/"), file.removeprefix(f"{PREFERENCES}/")}


def find_rows(raw_dir: Path, drop: str | None = None, line: int | None = None, raw_sha256: str | None = None,
              text: str | None = None, unreadable: list[str] | None = None,
              completion_id: str | None = None, whole_drop: bool = False) -> list[dict]:
    """The raw rows a request names, in SFT or preference drops: by drop (file name or partition key; a
    preference drop also as preferences/<name>) and line, by (a prefix of) the raw
    row's hash, or every row whose user or assistant text contains `text`. A row found by drop and line or
    by hash is found in every drop that has the same raw row. Each: drop, file, line, raw_sha256 and a short
    preview of its text (for the confirmation prompt; never stored). A drop that cannot be read is left out,
    its error appended to `unreadable`. `completion_id`: the rows made from that stored completion (reviewed
    traffic), possibly none. A row made from a stored completion has its `completion_id`. `whole_drop`: every row
    of `drop` (a deleted fine-tuning file)."""
    unreadable = [] if unreadable is None else unreadable
    drops = _all_drops(raw_dir)
    if drop is not None:
        named = sorted({d[0] for d in drops if drop in _names(d[0], d[1])})
        if not named:
            raise ErasureError(f"no drop {drop!r} in {raw_dir}")
        if len(named) > 1 and drop in named:  # the exact key: X is the SFT drop, preferences/X the other
            named = [drop]
        if len(named) > 1:
            raise ErasureError(f"{drop!r} names {' and '.join(named)}; give the one you mean")
    rows = []
    for key, name, path, is_pref in drops:
        try:
            rows += _canonical_rows(key, name, path, is_pref)
        except formats.DropError as e:  # a drop the pipeline cannot read either (its run fails naming it)
            if drop is not None and drop in _names(key, name):
                raise ErasureError(str(e)) from e
            unreadable.append(str(e))
    if drop is not None and line is not None:
        hit = [r for r in rows if r["drop"] == named[0] and r["line"] == line]
        if not hit:
            raise ErasureError(f"drop {drop} has no line {line}")
        raw_sha256 = hit[0]["raw_sha256"]
    if raw_sha256 is not None:
        out = [r for r in rows if r["raw_sha256"].startswith(raw_sha256.lower())]
        if len({r["raw_sha256"] for r in out}) > 1:
            raise ErasureError(f"raw-sha256 prefix {raw_sha256} matches several rows; give more of it")
    elif completion_id is not None:
        return [_found(r) for r in rows if r["completion_id"] == completion_id]
    elif drop is not None and whole_drop:
        out = [r for r in rows if r["drop"] == named[0]]
    elif text is not None:
        if not text.strip():
            raise ErasureError("--text is empty")
        out = [r for r in rows if any(text in t for t in r.pop("texts"))]
    else:
        raise ErasureError("name the row: --drop D --line L, --raw-sha256 H, --text T or --completion-id ID")
    if not out:
        raise ErasureError("no raw row matches " + (f"raw-sha256 {raw_sha256}" if raw_sha256 else f"text {text!r}"))
    return [_found(r) for r in out]


def _found(r: dict) -> dict:
    out = {k: r[k] for k in ("drop", "file", "line", "raw_sha256", "preview")}
    if r["completion_id"]:
        out["completion_id"] = r["completion_id"]
    return out


def _canonical_rows(key: str, name: str, path: Path, is_preference: bool) -> list[dict]:
    parsed = formats.read_drop(path)
    if is_preference:
        from ft_pipeline.preference.pair_formats import detect_format
        from ft_pipeline.preference.pairs import canonical_pairs

        records = canonical_pairs(parsed, detect_format(parsed.rows, path))
    else:
        records = cleaning.iter_canonical(parsed, formats.detect_format(parsed.rows, path))
    lineage = {r.line: r.data.get("completion_id") for r in parsed.rows if isinstance(r.data, dict)}
    out = []
    for rec in records:
        texts = _texts(rec)
        out.append({"drop": key, "file": name, "line": rec["line"], "raw_sha256": rec["raw_sha256"],
                    "texts": texts, "preview": " | ".join(texts)[:100], "completion_id": lineage.get(rec["line"])})
    return out


def new_request(rows: list[dict], reason: str | None = None, redacted_source: bool = False,
                completions: list[str] | None = None) -> dict:
    """The request as stored: when, which rows (by hash) and stored completions (by id), why; never their text."""
    now = datetime.datetime.now(datetime.timezone.utc)
    out = {"id": f"erase-{now:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}", "created": now.isoformat(timespec="seconds"),
           "reason": reason, "redacted_source": redacted_source,
           "rows": [{k: r[k] for k in ("drop", "file", "line", "raw_sha256")} for r in rows]}
    if completions:
        out["completions"] = sorted(completions)
    return out


def append_request(home: Path, request: dict) -> Path:
    path = requests_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(request, sort_keys=True) + "\n")
    return path


def redact_source(raw_dir: Path, rows: list[dict], request: dict) -> list[Path]:
    """Rewrite each row's line in its raw JSONL file with a note of what was done (the file's other lines
    unchanged). Other formats are refused before anything is written."""
    found = {d: path for d, _, path, _ in _all_drops(raw_dir)}
    paths = {r["drop"]: found[r["drop"]] for r in rows}
    if bad := sorted(p.name for p in paths.values() if p.suffix != ".jsonl"):
        raise ErasureError(f"--redact-source rewrites JSONL drops only; edit {', '.join(bad)} yourself")
    note = {MARKER: request["id"], "note": f"row erased by `ft-pipeline forget` on {request['created']}"}
    for drop, path in paths.items():
        lines = path.read_bytes().split(b"\n")
        for r in rows:
            if r["drop"] == drop:
                lines[r["line"] - 1] = json.dumps(note).encode()
        path.write_bytes(b"\n".join(lines))
    return sorted(paths.values())


def erased_records(home: Path, erased: dict[str, str]) -> list[dict]:
    """The cleaned (and split) records of erased rows still under the home: what the scrub looks for."""
    data = Path(home) / "data"
    out = []
    for path in sorted([*data.glob("cleaned/*.jsonl"), *data.glob("split/*.jsonl"),
                        *data.glob("preference_pairs/*.jsonl")]):
        with open(path, encoding="utf-8") as f:
            out += [rec for ln in f if ln.strip() and (rec := json.loads(ln)).get("raw_sha256") in erased]
    return out


def needles(records: list[dict]) -> set[str]:
    """The texts to remove from reports: every user and assistant text, as written, JSON-escaped and as the
    markdown report shows it (escaped, cut at 160 characters)."""
    from ft_pipeline.evaluation.report import _esc

    out = set()
    for rec in records:
        for t in _texts(rec):
            if len(t) >= 8:  # a short answer ("ok") is not this row's text
                out |= {t, json.dumps(t, ensure_ascii=False)[1:-1], _esc(t)}
    return out


def scrub_text(text: str, found: set[str]) -> str:
    for n in sorted(found, key=len, reverse=True):
        text = text.replace(n, "[erased]")
    return text


def scrub(home: Path, erased: dict[str, str]) -> dict[str, int]:
    """Remove erased rows from what is under the home now: their lines in every JSONL file under data/, their
    evaluation cache entries, and their text in the reports. Returns {what: how many}."""
    home = Path(home)
    records = erased_records(home, erased)
    keys, found = {eval_cache.example_key(r) for r in records if "messages" in r}, needles(records)
    counts = {"data_lines": 0, "cache_entries": 0, "reports": 0}
    for path in sorted((home / "data").glob("*/*.jsonl")):
        if path.parent.name != "erased":  # hashes and request ids only: what cleaning erased, kept as is
            counts["data_lines"] += _drop_lines(path, lambda e: e.get("raw_sha256") in erased)
    for path in sorted((home / "cache" / "eval").glob("*.jsonl")):
        counts["cache_entries"] += _drop_lines(path, lambda e: e.get("key") in keys)
    for path in sorted((home / "reports").glob("evaluation.*")):
        text = path.read_text()
        if (new := scrub_text(text, found)) != text:
            path.write_text(new)
            counts["reports"] += 1
    return counts


def _drop_lines(path: Path, erased) -> int:
    kept, n = [], 0
    for ln in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            hit = ln.strip() and erased(json.loads(ln))
        except json.JSONDecodeError:
            hit = False  # a line cut short by a killed run: it names no row
        n += bool(hit)
        if not hit:
            kept.append(ln)
    if n:
        tmp = path.with_name(path.name + ".erasing")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return n
