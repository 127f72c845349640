"""Data layer benchmark: 1M generated rows through ingest -> validate -> dedup -> split, the pipeline's core
functions against a naive per-row baseline, side by side in one run.

`python -m bench data` (or `make bench BENCH=data`) prints:
  data.speedup            rows/s of the pipeline path / rows/s of the naive path (same work), goal >= 3
  data.near_dup_rows_per_s   MinHash signatures + LSH dedup of every row, goal >= 20000 (2 cores)
  data.peak_rss_gb        peak RSS of the pipeline path on the 1M rows (a child process), goal <= 2

The rows are 4 drops (JSONL chat, JSON Alpaca array, CSV prompt/completion, Parquet chat) of generated support
messages, deterministic from a seed, with exact duplicates, re-worded near-duplicates, malformed and invalid
rows. The naive path does the same work row by row: `json.loads` per line (`csv`, `json.load`, pyarrow for the
other files), the same validation, normalization and redaction, a Python set of hashes for exact and normalized
duplicates, datasketch's MinHash and MinHashLSH per row (permutations shared, as datasketch's docs advise) for
near-duplicates, and the same hash split. Because it runs at a few thousand rows a second, the naive path is
timed on the first BASELINE_ROWS rows of every drop (its rows/s only gets worse with more rows: its LSH index
grows), the pipeline on all of them."""

from __future__ import annotations

import csv
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import bench_line  # noqa: E402

N_ROWS = int(os.environ.get("BENCH_DATA_ROWS", 1_000_000))
BASELINE_FRACTION = float(os.environ.get("BENCH_DATA_BASELINE_FRACTION", 0.05))
SEED = 7
WORDS = ("laptop headphones order refund screen cracked charger missing box delivery late twice card charged "
         "account locked password reset battery drains fast warranty replacement courier tracking address office "
         "home return label colour size broken speaker bulb tablet reader band webcam firmware update app crash "
         "login email invoice discount code tax receipt store pickup monday friday week month urgent soon please "
         "thanks help need want arrived yesterday today again still never always maybe cannot works stopped "
         "sound light screen cable plug socket power button menu settings pairing bluetooth wifi signal").split()
INTENTS = ["refund", "cancel_order", "shipping_status", "damaged_item", "billing_issue", "account_access"]


def _message(r: random.Random, i: int) -> tuple[str, str]:
    words = " ".join(r.choice(WORDS) for _ in range(r.randint(14, 40)))
    extra = r.random()
    if extra < 0.05:
        words += f" mail me at user{i}@example.com"
    elif extra < 0.08:
        words += " card 4111 1111 1111 1111"
    q = f"Hi, {words}. Order ORD-{r.randint(100000, 999999)}."
    a = json.dumps({"intent": r.choice(INTENTS), "order_id": f"ORD-{i:06d}", "urgency": r.choice(["low", "high"])})
    return q, a


def generate_rows(n: int, seed: int) -> list[tuple[str, str] | None]:
    """n (question, answer) pairs: ~6% exact copies, ~6% re-worded copies of an earlier row, 1% unusable (None)."""
    r = random.Random(seed)
    rows: list[tuple[str, str] | None] = []
    for i in range(n):
        p = r.random()
        if p < 0.06 and rows and rows[-1] is not None:
            rows.append(rows[r.randrange(len(rows))] or _message(r, i))
        elif p < 0.12 and rows:
            src = rows[r.randrange(len(rows))] or _message(r, i)
            rows.append((src[0].replace("Hi,", r.choice(["Hello,", "Hey,", "Dear team,"])), src[1]))
        elif p < 0.13:
            rows.append(None)
        else:
            rows.append(_message(r, i))
    return rows


def write_drops(out: Path, n: int, seed: int) -> dict[str, Path]:
    """Four drops in four file formats, 40/20/20/20 % of the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = generate_rows(n, seed)
    cut = [0, int(n * 0.4), int(n * 0.6), int(n * 0.8), n]
    paths = {}
    p = out / "2026-01-chat.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for row in rows[cut[0]:cut[1]]:
            if row is None:
                f.write('{"messages": [{"role": "user", "content": "truncated\n')
            else:
                f.write(json.dumps({"messages": [{"role": "user", "content": row[0]},
                                                 {"role": "assistant", "content": row[1]}]}) + "\n")
    paths[p.name] = p
    p = out / "2026-02-alpaca.json"
    p.write_text(json.dumps([{"instruction": "Extract the fields as JSON.", "input": row[0], "output": row[1]}
                             if row else {"instruction": "x", "output": ""} for row in rows[cut[1]:cut[2]]], indent=0))
    paths[p.name] = p
    p = out / "2026-03-tickets.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "completion"])
        w.writerows(row if row else ("only a prompt", "") for row in rows[cut[2]:cut[3]])
    paths[p.name] = p
    p = out / "2026-04-export.parquet"
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": row[0]}, {"role": "assistant", "content": row[1]}]
                                          if row else [{"role": "user", "content": "no answer"}]
                                          for row in rows[cut[3]:cut[4]]]}), p)
    paths[p.name] = p
    return paths


# ---------------------------------------------------------------- the pipeline path: the real core functions

def pipeline(paths: dict[str, Path]) -> dict:
    from ft_pipeline.core import cleaning, formats, splitting

    t0 = time.perf_counter()
    rows_in, cleaned, dups = 0, {}, 0
    for name, path in sorted(paths.items()):
        parsed = formats.read_drop(path)
        records = cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, path))
        del parsed
        out = cleaning.clean_records(records)
        rows_in += out.rows_in
        dups += len(out.duplicates)
        cleaned[name] = out.kept
        del records, out
    split = splitting.split_examples(cleaned, 0.1, 0, near_dup=cleaning.NearDupParams())
    return {"rows": rows_in, "seconds": time.perf_counter() - t0, "train": len(split.train),
            "holdout": len(split.holdout), "duplicates": dups + len(split.cross_drop_duplicates)}


def near_dup_only(paths: dict[str, Path]) -> dict:
    """Signatures and greedy LSH dedup of every parsed example, timed alone."""
    from ft_pipeline.core import cleaning, formats, near_dup

    examples = []
    for name, path in sorted(paths.items()):
        parsed = formats.read_drop(path)
        examples += [r["messages"] for r in cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, path))
                     if "messages" in r]
    params = near_dup.NearDupParams()
    t0 = time.perf_counter()
    sig = near_dup.signatures(examples, params)
    dup_of, _ = near_dup.dedup(sig, params)
    return {"rows": len(examples), "seconds": time.perf_counter() - t0, "near_dups": int((dup_of >= 0).sum())}


def child(mode: str, data_dir: str) -> None:
    paths = {p.name: p for p in sorted(Path(data_dir).iterdir())}
    print(json.dumps(pipeline(paths) if mode == "pipeline" else near_dup_only(paths)))


def run_child(mode: str, data_dir: Path) -> dict:
    """Run in a fresh process so its peak RSS is its own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(data_dir)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_gb"] = max(peak, before) * 1024 / 1e9  # ru_maxrss is in KiB on Linux
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        sys.exit(0)
