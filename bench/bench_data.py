"""Data layer benchmark: 1M generated rows through ingest -> validate -> dedup -> split, the pipeline's stage
functions against a naive per-row baseline, side by side in one run (about 2 minutes on 2 quiet cores).

`python -m bench data` (or `make bench BENCH=data`) prints:
  data.speedup              rows/s of the pipeline path / rows/s of the naive path (the same work), goal >= 3
  data.near_dup_rows_per_s  MinHash signatures of the inputs, answer keys and LSH dedup (near inputs with the
                            same answer) of every parsed row, one process, goal >= 20000
  data.peak_rss_gb          largest peak RSS of a pipeline stage on the 1M rows, its worker processes included
                            (sampled every 20 ms), goal <= 2

The rows are 4 drops (400k JSONL chat, 200k JSON Alpaca array, 200k CSV prompt/completion, 200k Parquet chat)
of generated support messages, deterministic from a seed, with exact duplicates (6%), re-worded near-duplicates
(6%) and unusable rows (1%).

Pipeline path, as the ingest_drop job runs it: one process per drop doing both of its steps, raw_examples
(read_drop, canonical records streamed to JSONL) then cleaned_examples (that JSONL streamed back a chunk at a
time through clean_stream, whose worker processes, one per core, clean chunks side by side; kept rows, quarantine,
duplicates and MinHash signatures written); then one process for split_files (streams the cleaned files, reuses
the signatures; no tokenizer, so no token-length policy, which the naive path does not do either). Its time is
the sum of the stages' wall times, one after another, imports excluded.

Naive path, one process, the same work row by row: `json.loads` per line (`csv`, `json.loads` of the array,
pyarrow for the other files), the same validation, normalization and redaction functions, raw-row hashes and
ids, a dict of normalized keys for exact and normalized duplicates, datasketch MinHash of the input
(permutations shared, as its docs advise) and MinHashLSH per row for near-duplicates with the same answer key, a
dict of input keys for label conflicts, the same hash split, outputs written as JSONL.
At a few thousand rows a second it runs on the first BENCH_DATA_BASELINE_FRACTION (5%) of the same generated
stream; that favours it, since its LSH index and dicts only grow with more rows."""

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
from collections import Counter
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
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": row[0]},
                                           {"role": "assistant", "content": row[1]}]
                                          if row else [{"role": "user", "content": "no answer"}]
                                          for row in rows[cut[3]:cut[4]]]}), p)
    paths[p.name] = p
    return paths


# ---------------------------------------------------------------- the pipeline path: the real stage functions
# As Dagster runs it: each drop cleaned in its own process (cleaned_examples is partitioned, one step each),
# writing its cleaned JSONL and MinHash signatures; then the split in one process, streaming those files.

def clean_drop(path: Path, out_dir: Path) -> dict:
    """One drop as the ingest_drop job runs it in one process: raw_examples (parse, canonical records streamed
    to JSONL), then cleaned_examples (those records streamed back a chunk at a time through cleaning, the kept
    ones written as they pass, signatures saved for the split)."""
    import numpy as np
    import pyarrow.parquet  # noqa: F401  imported before the clock starts, as the naive path does

    from ft_pipeline.data import cleaning, formats
    from ft_pipeline.jsonl import write_jsonl

    t0 = time.perf_counter()
    parsed = formats.read_drop(path)
    raw_jsonl = out_dir / f"{path.name}.raw.jsonl"
    write_jsonl(raw_jsonl, cleaning.iter_canonical(parsed, formats.detect_format(parsed.rows, path)))
    del parsed
    with open(raw_jsonl, "rb") as lines:
        out = cleaning.clean_stream(lines, out_dir / f"{path.name}.jsonl")
    write_jsonl(out_dir / f"{path.name}.quarantine", out.quarantined)
    write_jsonl(out_dir / f"{path.name}.duplicates", out.duplicates)
    np.save(out_dir / f"{path.name}.npy", out.signatures)
    raw_jsonl.unlink()
    return {"rows": out.rows_in, "seconds": time.perf_counter() - t0, "kept": out.kept_count,
            "duplicates": len(out.duplicates), "quarantined": len(out.quarantined)}


def split(cleaned_dir: Path) -> dict:
    import numpy as np

    from ft_pipeline.data import splitting

    t0 = time.perf_counter()
    files = {p.name.removesuffix(".jsonl"): p for p in sorted(cleaned_dir.glob("*.jsonl"))}
    sigs = {name: np.load(cleaned_dir / f"{name}.npy") for name in files}
    out = cleaned_dir / "split"
    out.mkdir()
    m = splitting.split_files(files, out, splitting.SplitOptions(), tokenizer=None, signatures=sigs)
    return {"rows": m["rows_in"], "seconds": time.perf_counter() - t0, "train": m["train"],
            "holdout": m["holdout"], "duplicates": m["cross_drop_duplicates"]}


def pipeline(data_dir: Path) -> dict:
    """Every stage in its own child process: rows, seconds of work (summed), peak RSS (the largest child)."""
    cleaned = data_dir.parent / f"{data_dir.name}-cleaned"
    cleaned.mkdir()
    stages = [run_child("clean", p, cleaned) for p in sorted(data_dir.iterdir())]
    stages.append(run_child("split", cleaned))
    rows = sum(s["rows"] for s in stages[:-1])
    print(f"# pipeline stages on {data_dir.name}: " + ", ".join(
        f"{n} {s['rows']} rows {s['seconds']:.1f}s {s['peak_rss_gb']:.2f}GB"
        for n, s in zip([p.name for p in sorted(data_dir.iterdir())] + ["split"], stages)), flush=True)
    return {"rows": rows, "seconds": sum(s["seconds"] for s in stages),
            "peak_rss_gb": max(s["peak_rss_gb"] for s in stages),
            "train": stages[-1]["train"], "holdout": stages[-1]["holdout"],
            "duplicates": sum(s["duplicates"] for s in stages)}


def near_dup_only(paths: dict[str, Path]) -> dict:
    """Signatures of the inputs, answer keys and greedy LSH dedup (a duplicate has the same answer) of every
    parsed example, timed alone."""
    from ft_pipeline.data import cleaning, formats, keys, lsh, near_dup

    examples = []
    for _name, path in sorted(paths.items()):
        parsed = formats.read_drop(path)
        examples += [r["messages"] for r in cleaning.canonicalize(parsed, formats.detect_format(parsed.rows, path))
                     if "messages" in r]
    params = near_dup.NearDupParams()
    t0 = time.perf_counter()
    sig = near_dup.signatures(map(near_dup.input_side, examples), params)
    answers = keys.as_uint64(keys.answer_keys(examples))
    dup_of, _ = lsh.dedup(sig, params, groups=answers)
    return {"rows": len(examples), "seconds": time.perf_counter() - t0, "near_dups": int((dup_of >= 0).sum())}


# ---------------------------------------------------------------- the naive path: the same work, row by row

def naive(paths: dict[str, Path]) -> dict:
    """The same work, the straightforward way: every row parsed, validated, normalized, redacted, hashed,
    checked against a set and a datasketch LSH index, dealt, and written out with its provenance."""
    import hashlib
    import re

    import pyarrow.parquet as pq
    from datasketch import MinHash, MinHashLSH

    from ft_pipeline.data.cleaning import normalize_text, redact
    from ft_pipeline.data.formats import RowError, to_messages
    from ft_pipeline.data.near_dup import NearDupParams
    from ft_pipeline.data.splitting import holdout_bucket

    params = NearDupParams()
    perms = MinHash(num_perm=params.num_perm, seed=params.seed).permutations
    lsh = MinHashLSH(num_perm=params.num_perm, params=params.bands)
    keys = {"messages": "openai_chat", "instruction": "alpaca", "prompt": "prompt_completion"}
    out_dir = Path(tempfile.mkdtemp(prefix="naive_"))
    outs = {n: open(out_dir / f"{n}.jsonl", "w", encoding="utf-8")
            for n in ("train", "holdout", "quarantine", "duplicates")}
    sketches, seen, answers, by_input, pii, n = {}, {}, {}, {}, Counter(), Counter()
    t0 = time.perf_counter()
    for name, path in sorted(paths.items()):
        if path.suffix == ".jsonl":
            items = ((line, text) for line, text in enumerate(open(path, encoding="utf-8"), start=1))
        elif path.suffix == ".json":
            items = enumerate(json.loads(path.read_text(encoding="utf-8")), start=1)
        elif path.suffix == ".csv":
            items = enumerate(csv.DictReader(open(path, newline="", encoding="utf-8")), start=2)
        else:
            items = enumerate(pq.read_table(path).to_pylist(), start=1)
        fmt = None
        for line, item in items:
            n["rows"] += 1
            raw = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            where = {"drop": name, "line": line, "raw_sha256": hashlib.sha256(raw.encode()).hexdigest()}
            try:
                data = json.loads(item) if isinstance(item, str) else item
                fmt = fmt or next(f for k, f in keys.items() if k in data)
                messages = to_messages(data, fmt)
            except (ValueError, RowError, StopIteration) as e:
                outs["quarantine"].write(json.dumps({**where, "reason": str(e), "raw": raw}) + "\n")
                continue
            messages = [{**m, "content": normalize_text(m["content"])} for m in messages]
            if sum(len(m["content"]) for m in messages) > 4000:
                outs["quarantine"].write(json.dumps({**where, "reason": "too long", "raw": raw}) + "\n")
                continue
            messages = [{**m, "content": redact(m["content"], pii)} for m in messages]
            text = " ".join(f"{m['role']} {m['content']}" for m in messages).casefold()
            words = re.sub(r"[\W_]+", " ", text).split()
            key = hashlib.sha256(" ".join(words).encode()).hexdigest()[:16]
            side = [" ".join(f"{m['role']} {m['content']}" for m in messages if (m["role"] == "assistant") == a)
                    .casefold() for a in (False, True)]
            inputs, answer = (re.sub(r"[\W_]+", " ", t).split() for t in side)
            ikey, akey = (hashlib.sha256(" ".join(w).encode()).hexdigest()[:16] for w in (inputs, answer))
            if by_input.setdefault(ikey, akey) != akey:  # a label conflict: counted, both kept
                n["conflicts"] += 1
            rec = {"id": hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:16], "near_key": key, **where,
                   "messages": messages}
            first = seen.get(key)
            if first is None:  # exact and normalized duplicates: one dict of keys
                m = MinHash(num_perm=params.num_perm, seed=params.seed, permutations=perms, scheme="affine32")
                m.update_batch({f"{a} {b}".encode() for a, b in zip(inputs, inputs[1:])} or {inputs[0].encode()})
                first = next((seen[c] for c in lsh.query(m) if answers[c] == akey
                              and m.jaccard(sketches[c]) >= params.threshold), None)
            if first is not None:
                outs["duplicates"].write(json.dumps({**where, "duplicate_of": first}) + "\n")
                continue
            seen[key] = {"drop": name, "line": line}
            sketches[key], answers[key] = m, akey
            lsh.insert(key, m)
            side = "holdout" if holdout_bucket(key, 0) < 0.1 else "train"
            outs[side].write(json.dumps(rec, ensure_ascii=False) + "\n")
            n[side] += 1
    for f in outs.values():
        f.close()
    return {"rows": n["rows"], "seconds": time.perf_counter() - t0, "train": n["train"], "holdout": n["holdout"]}


def child(mode: str, *args: str) -> dict:
    if mode == "generate":
        return {"files": len(write_drops(Path(args[0]), int(args[1]), SEED))}
    if mode == "clean":
        return clean_drop(Path(args[0]), Path(args[1]))
    if mode == "split":
        return split(Path(args[0]))
    paths = {p.name: p for p in sorted(Path(args[0]).iterdir())}
    return {"naive": naive, "near_dup": near_dup_only}[mode](paths)


def peak_rss_gb() -> float:
    """This process's peak RSS since it started its program. Not getrusage's ru_maxrss: on Linux that keeps
    the high-water mark of the parent's memory the child was forked from, across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # no /proc: KiB, an upper bound


class TreeRss:
    """Peak RSS of this process and its worker processes together (cleaning runs a pool), sampled every
    20 ms by a thread."""

    def __init__(self):
        import threading

        import psutil

        self.me, self.peak, self.done = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import psutil

        while not self.done.wait(0.02):
            total = 0
            for p in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)

    def stop_gb(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak / 1e9


def run_child(mode: str, *args: Path) -> dict:
    """Run one stage in a fresh process, which reports its own work time and peak RSS."""
    proc = subprocess.run([sys.executable, __file__, "--child", mode, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        tree = TreeRss()
        result = child(sys.argv[2], *sys.argv[3:])
        result["peak_rss_gb"] = max(peak_rss_gb(), tree.stop_gb())  # this process alone, or with its workers
        print(json.dumps(result))
        sys.exit(0)

    n_base = max(1000, int(N_ROWS * BASELINE_FRACTION))
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        full, small = Path(tmp) / "full", Path(tmp) / "small"
        full.mkdir()
        small.mkdir()
        t0 = time.perf_counter()
        run_child("generate", full, Path(str(N_ROWS)))  # in a child: this process stays small
        run_child("generate", small, Path(str(n_base)))
        print(f"# generated {N_ROWS} + {n_base} rows in {time.perf_counter() - t0:.0f}s", flush=True)
        pipe = pipeline(full)
        base = run_child("naive", small)
        pipe_small = pipeline(small)
        nd = run_child("near_dup", full)
    rate = lambda r: r["rows"] / r["seconds"]  # noqa: E731
    print(f"# naive {base['rows']} rows {rate(base):.0f} rows/s; pipeline {pipe_small['rows']} rows "
          f"{rate(pipe_small):.0f} rows/s (same-size ratio {rate(pipe_small) / rate(base):.2f}); pipeline "
          f"{pipe['rows']} rows in {pipe['seconds']:.0f}s, {rate(pipe):.0f} rows/s, train {pipe['train']} holdout "
          f"{pipe['holdout']} duplicates {pipe['duplicates']}; near-dup {nd['rows']} rows in {nd['seconds']:.1f}s, "
          f"{nd['near_dups']} near-duplicates", flush=True)
    ok = [bench_line("data.speedup", rate(pipe) / rate(base), "x", ">=", 3),
          bench_line("data.near_dup_rows_per_s", rate(nd), "rows/s", ">=", 20000),
          bench_line("data.peak_rss_gb", pipe["peak_rss_gb"], "GB", "<=", 2)]
