"""serve.batched_throughput: completion tokens/s of `ft-pipeline serve` with 16 concurrent clients ÷ the same
requests sent one at a time, on the same server process, side by side in one run; p50 and p95 latency of both.

The server is the real one (`python -m ft_pipeline.cli serve` in a subprocess, default batching: 50 ms window,
batch of 16), spoken to over HTTP on loopback. The model is what the registry's `champion` alias points to in
the pipeline's store (FT_PIPELINE_HOME / MLFLOW_TRACKING_URI), i.e. the model `make run` registered; with no
champion there, the default run's base model as it is (BENCH_SERVE_BASE, default smollm2-135m-instruct;
builtin:tiny for the untrained tiny model), registered in a temporary store.
The prompts are the demo holdout prompts bench_eval uses; every request is greedy (temperature 0), and the
benchmark fails if any answer differs between the two ways of sending it.

serve.constrained_overhead: completion tokens/s of the 16 clients when every request carries the served
version's registered output schema as a strict json_schema (the schema inferred from the demo answers when the
version has none) ÷ the same requests free, with the mask time per constrained token (the server's /health);
serve.constrained_same_answers: of the free greedy answers that already follow the schema, the share that the
constrained run answers identically (goal 1.0; parsed-equal is printed beside it). The throughput runs stop at
BENCH_SERVE_MAX_TOKENS, which cuts most tickets (a demo answer is 31 to 44 SmolLM2 tokens, 41 the median), and
a cut answer follows no schema: this check asks the same requests again, free and constrained, with
BENCH_SERVE_SAME_MAX_TOKENS (default 96), so it compares whole answers.

serve.store_overhead: completion tokens/s of the 16 clients when every request carries `store: true` ÷ the same
requests without it (goal >= 0.95), side by side on the same server, which stores into a temporary home's
database (FT_PIPELINE_STORE_PATH); every stored answer must equal its unstored twin and every completion be in
the store.

serve.multi_adapter_throughput and serve.multi_adapter_memory: two tasks on one base (_serve_multi.py).

Run: python -m bench serve. BENCH_SERVE_REQUESTS (default 64), BENCH_SERVE_MAX_TOKENS (default 32) and
BENCH_SERVE_SAME_MAX_TOKENS shrink it."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import _serve_multi  # noqa: E402
from bench._report import bench_line  # noqa: E402

CLIENTS = 16
N_REQUESTS = int(os.environ.get("BENCH_SERVE_REQUESTS", 64))
MAX_TOKENS = int(os.environ.get("BENCH_SERVE_MAX_TOKENS", 32))
SAME_MAX_TOKENS = int(os.environ.get("BENCH_SERVE_SAME_MAX_TOKENS", 96))  # whole tickets, for same_answers
NAME = "ft-pipeline-adapter"
# Served when the store has no champion: the default run's base model (BENCH_SERVE_BASE=builtin:tiny: the tiny one).
BASE = os.environ.get("BENCH_SERVE_BASE", "smollm2-135m-instruct")


def tracking_uri(tmp: Path) -> str:
    """The pipeline's store when it has a champion, else a temporary one holding the untrained tiny model."""
    import mlflow

    from ft_pipeline import settings
    from ft_pipeline.model.base_models import build_tiny, resolve_base_model
    from ft_pipeline.registry import versions as registry
    from ft_pipeline_tests._serving import register_tiny

    uri = settings.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    exists = not uri.startswith("sqlite:") or Path(uri.removeprefix("sqlite:///")).exists()  # never create one
    if exists and (champ := registry.champion(NAME)):
        print(f"# model: {NAME}@champion version {champ.version} from {uri}", flush=True)
        return uri
    if BASE == "builtin:tiny":
        base = build_tiny(tmp / "base", seed=0)
    else:  # converted once into the pipeline's home, where the pipeline's base_model asset keeps it too
        base = resolve_base_model(BASE, settings.home() / "models" / "base").path
    print(f"# model: no champion in the pipeline's store; the base model {BASE} as it is, in a temporary store",
          flush=True)
    return register_tiny(tmp, base, None)


def send(client, conv, fmt: dict | None = None, store: bool = False, max_tokens: int = MAX_TOKENS,
         model: str = NAME) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json={"model": model, "messages": conv, "temperature": 0,
                                                 "max_tokens": max_tokens,
                                                 **({"response_format": fmt} if fmt else {}),
                                                 **({"store": True, "metadata": {"bench": "serve"}} if store else {})})
    r.raise_for_status()
    out = r.json()
    return out["choices"][0]["message"]["content"], out["usage"]["completion_tokens"], time.perf_counter() - t0


def run(url: str, convs: list, clients: int, fmt: dict | None = None, store: bool = False,
        max_tokens: int = MAX_TOKENS, model: str | list = NAME) -> tuple[list, float]:
    """Every conversation sent by `clients` threads, each sending its next one as soon as it has an answer, to
    `model` (one model id, or one per conversation). Returns the (text, completion tokens, latency) per
    conversation and the wall time."""
    import httpx

    todo: queue.Queue = queue.Queue()
    for i, conv in enumerate(convs):
        todo.put((i, conv))
    results: list = [None] * len(convs)

    def worker():
        with httpx.Client(base_url=url, timeout=600) as c:
            while True:
                try:
                    i, conv = todo.get_nowait()
                except queue.Empty:
                    return
                results[i] = send(c, conv, fmt, store, max_tokens, model if isinstance(model, str) else model[i])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> int:
    from bench.bench_eval import demo_holdout
    from ft_pipeline.evaluation.scoring import prompt_messages

    holdout = demo_holdout()
    convs = [prompt_messages(holdout[i % len(holdout)]) for i in range(N_REQUESTS)]
    with tempfile.TemporaryDirectory() as tmp:
        uri = tracking_uri(Path(tmp))
        ok = one_task(uri, convs, holdout, Path(tmp) / "home" / "traffic" / "completions.db")
        ok &= _serve_multi.report(Path(tmp) / "multi", uri, convs, CLIENTS, run, HERE.parent)
    return 0 if ok else 1


def one_task(uri: str, convs: list, holdout: list, db: Path) -> bool:
    """serve.batched_throughput, the constrained and the store figures, on the store's champion; stored
    completions go to `db` (a temporary home's)."""
    from ft_pipeline_tests._serving import start_cli_server

    proc, url = start_cli_server({**os.environ, "MLFLOW_TRACKING_URI": uri, "FT_PIPELINE_STORE_PATH": str(db)},
                                 "--model", NAME, cwd=HERE.parent, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        run(url, convs[:2], 1)  # warm-up
        one, t_one = run(url, convs, 1)
        many, t_many = run(url, convs, CLIENTS)
        run(url, convs[:2], 1, store=True)  # warm-up: the store is opened on first use
        stored, t_stored = run(url, convs, CLIENTS, store=True)
        plain, t_plain = run(url, convs, CLIENTS)  # again without, right after: the pair side by side
        kept = stored_count(db)
        schema = served_schema(url, holdout)
        fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
        run(url, convs[:2], 1, fmt)  # warm-up: the grammar compiles once
        mask0 = mask_stats(url)
        constrained, t_con = run(url, convs, CLIENTS, fmt)
        mask1 = mask_stats(url)
        whole = (run(url, convs, CLIENTS, max_tokens=SAME_MAX_TOKENS)[0],
                 run(url, convs, CLIENTS, fmt, max_tokens=SAME_MAX_TOKENS)[0])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    tokens = sum(n for _, n, _ in one)
    for label, res, t in (("one at a time", one, t_one), (f"{CLIENTS} concurrent clients", many, t_many)):
        lat = [x for *_, x in res]
        print(f"# {label}: {sum(n for _, n, _ in res) / t:.0f} completion tok/s ({t:.1f}s), latency p50 "
              f"{pct(lat, 0.5):.2f}s p95 {pct(lat, 0.95):.2f}s", flush=True)
    same = sum(a[0] == b[0] for a, b in zip(one, many))
    print(f"# {len(convs)} requests, {tokens} completion tokens, max_tokens {MAX_TOKENS}; identical greedy "
          f"answers: {same}/{len(convs)}", flush=True)
    if same != len(convs):
        first = next(i for i, (a, b) in enumerate(zip(one, many)) if a[0] != b[0])
        print(f"# answers differ, first at request {first}: alone {one[first][0]!r} vs batched {many[first][0]!r}")
        return False
    ratio = (sum(n for _, n, _ in many) / t_many) / (tokens / t_one)
    ok = bench_line("serve.batched_throughput", ratio, "x", ">=", 4)
    ok &= report_constrained(schema, many, t_many, constrained, t_con, mask0, mask1)
    ok &= report_same_answers(schema, *whole)
    return report_store(kept, many + plain, t_many + t_plain, stored, t_stored) and ok


def stored_count(db: Path) -> int:
    from ft_pipeline.traffic.store import CompletionStore

    if not db.exists():
        return 0
    store = CompletionStore(db)
    try:
        return store.count()
    finally:
        store.close()


def report_store(kept: int, free: list, t_free: float, stored: list, t_stored: float) -> bool:
    """store: true on every request against the same requests without it (both 16-client runs without it, one
    before and one after, against the one with it: the machine's drift cancels); `kept`: completions stored."""
    free_tps, stored_tps = sum(n for _, n, _ in free) / t_free, sum(n for _, n, _ in stored) / t_stored
    same = sum(a[0] == b[0] for a, b in zip(free, stored))
    lat = [x for *_, x in stored]
    print(f"# store: true, {CLIENTS} clients: {stored_tps:.0f} completion tok/s vs {free_tps:.0f} without; latency "
          f"p50 {pct(lat, 0.5):.2f}s p95 {pct(lat, 0.95):.2f}s; {kept} completions in the store (2 warm-up), "
          f"identical answers {same}/{len(stored)}", flush=True)
    if kept != len(stored) + 2 or same != len(stored):
        print("# the store missed a completion or an answer changed", flush=True)
        return False
    return bench_line("serve.store_overhead", stored_tps / free_tps, "x", ">=", 0.95)


def served_schema(url: str, holdout: list) -> dict:
    """The served version's registered output schema (GET /v1/models), else the one inferred from the demo
    answers."""
    import httpx

    from ft_pipeline.structured.schema import SchemaCollector

    row = next(m for m in httpx.get(f"{url}/v1/models", timeout=60).json()["data"] if m["id"] == NAME)
    if row.get("output_schema"):
        print("# schema: the served version's registered output schema", flush=True)
        return row["output_schema"]
    c = SchemaCollector()
    for rec in holdout:
        c.add_messages(rec["messages"])
    print(f"# schema: none registered; inferred from the demo holdout answers ({c.why or 'ok'})", flush=True)
    return c.schema()


def mask_stats(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=60).json().get("mask") or {"seconds": 0.0, "tokens": 0}


def report_constrained(schema, free, t_free, con, t_con, mask0, mask1) -> bool:
    free_tps, con_tps = sum(n for _, n, _ in free) / t_free, sum(n for _, n, _ in con) / t_con
    ms, n = (mask1["seconds"] - mask0["seconds"]) * 1e3, mask1["tokens"] - mask0["tokens"]
    print(f"# constrained, {CLIENTS} clients: {con_tps:.0f} completion tok/s vs free {free_tps:.0f}; mask "
          f"{ms / max(n, 1):.3f} ms per constrained token ({n} tokens)", flush=True)
    return bench_line("serve.constrained_overhead", con_tps / free_tps, "x", ">=", 0.85)


def report_same_answers(schema, free, con) -> bool:
    """serve.constrained_same_answers on the answers asked with SAME_MAX_TOKENS."""
    import json

    import jsonschema

    def valid(text):
        try:
            jsonschema.validate(json.loads(text), schema)
            return True
        except (ValueError, jsonschema.ValidationError):
            return False

    cut = [sum(n >= SAME_MAX_TOKENS for _, n, _ in res) for res in (free, con)]
    print(f"# same answers, max_tokens {SAME_MAX_TOKENS}: cut at the limit {cut[0]} free, {cut[1]} constrained",
          flush=True)
    was_valid = [i for i, (text, *_) in enumerate(free) if valid(text)]
    same = sum(free[i][0] == con[i][0] for i in was_valid)
    parsed = sum(json.loads(free[i][0]) == json.loads(con[i][0]) if valid(con[i][0]) else False for i in was_valid)
    print(f"# free answers already schema-valid: {len(was_valid)}/{len(free)}; identical constrained: {same}, "
          f"equal as JSON: {parsed}; constrained answers valid: {sum(valid(t) for t, *_ in con)}/{len(con)}",
          flush=True)
    if was_valid and same < len(was_valid):
        i = next(i for i in was_valid if free[i][0] != con[i][0])
        print(f"# first difference, request {i}: free {free[i][0]!r} vs constrained {con[i][0]!r}", flush=True)
    # no free answer that already follows the schema: nothing shows the answers are the same, so the check fails
    return bench_line("serve.constrained_same_answers", same / len(was_valid) if was_valid else 0.0, "share",
                      ">=", 1.0)


if __name__ == "__main__":
    sys.exit(main())
