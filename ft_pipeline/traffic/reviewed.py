"""Verdicts back into training data: what the `reviewed_traffic` asset (one partition a day) writes, as a drop
the data layer ingests like any other, and preference pairs beside the preference drops.

- accepted  → an SFT row: the conversation and the model's answer.
- corrected → an SFT row with the correction as the answer, and a preference pair (chosen: the correction,
  rejected: the model's answer) in `preferences/`.
- rejected without a correction → no row; counted.

Each row carries its lineage: `completion_id` (the stored completion), `registered_model` and `version` (what
answered), `review` and `reviewer`. The data layer reads only `messages` (or `prompt`/`chosen`/`rejected`) and
keeps the rest on the raw line, so a training row's (drop, line) leads back to its stored completion."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

DROP_SUFFIX = "reviewed_traffic"


def _conversation(messages: list[dict]) -> list[dict]:
    # "developer" is OpenAI's newer name for "system"; the data layer's roles are system, user, assistant
    return [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
            for m in messages]


def rows_from_verdicts(completions: list[dict]) -> tuple[list[dict], list[dict], Counter]:
    """(SFT rows, preference pairs, counts by verdict) of reviewed stored completions."""
    sft, pairs, counts = [], [], Counter()
    for c in completions:
        review = c["review"]
        counts[review] += 1
        if review not in ("accepted", "corrected"):
            continue
        lineage = {"completion_id": c["id"], "registered_model": c["registered_model"], "version": c["version"],
                   "review": review, "reviewer": c["reviewer"]}
        prompt = _conversation(c["messages"])
        answer = c["correction"] if review == "corrected" else c["answer"]
        sft.append({"messages": prompt + [{"role": "assistant", "content": answer}], **lineage})
        if review == "corrected":
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": c["correction"]}],
                          "rejected": [{"role": "assistant", "content": c["answer"]}], **lineage})
    return sft, pairs, counts


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # the raw-drop sensor never sees half a file


def write_drop(completions: list[dict], day: str, raw_dir: Path) -> dict:
    """The day's drop `<raw_dir>/<day>-reviewed_traffic.jsonl` and, when there are corrections,
    `<raw_dir>/preferences/<day>-reviewed_traffic.jsonl`; a file with no rows is not written (and an earlier
    one of the same day removed: the day's verdicts may have been withdrawn). Returns what was written."""
    sft, pairs, counts = rows_from_verdicts(completions)
    out = {"sft_rows": len(sft), "preference_pairs": len(pairs), "accepted": counts["accepted"],
           "corrected": counts["corrected"], "rejected": counts["rejected"], "files": []}
    for path, rows in ((Path(raw_dir) / f"{day}-{DROP_SUFFIX}.jsonl", sft),
                       (Path(raw_dir) / "preferences" / f"{day}-{DROP_SUFFIX}.jsonl", pairs)):
        if rows:
            _write_jsonl(path, rows)
            out["files"].append(str(path))
        elif path.exists():
            path.unlink()
    return out


def drop_version(out: dict) -> str:
    """A data version of what `write_drop` wrote: the files' contents (or "empty")."""
    if not out["files"]:
        return "empty"
    h = hashlib.sha256()
    for f in out["files"]:
        h.update(f"{Path(f).parent.name}/{Path(f).name}".encode() + b"\0" + Path(f).read_bytes())
    return h.hexdigest()[:16]
