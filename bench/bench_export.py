"""export.gguf_q8_0_seconds: wall time of `ft-pipeline export --format gguf --type q8_0` (export_gguf: the
version's artifacts downloaded, the adapter merged, the GGUF written with its Modelfile and export.json).

serve.llamacpp_single_stream: completion tokens/s of that Q8_0 file in llama.cpp (llama-cpp-python's
`Llama.create_chat_completion`, greedy, the file's own chat template, every core) against `ft-pipeline serve`
answering the same prompts one request at a time, side by side in one run; printed when llama_cpp is importable
(`make llamacpp` builds it), else said skipped. These figures have no goal: they tell a user what the export
costs and what running the file in llama.cpp gains, so they print `goal - INFO`.

The model is the registry's champion in the pipeline's store (what `make run` registered); with none there, the
default run's base model as it is in a temporary store (bench_serve.tracking_uri). The prompts are the demo
holdout prompts bench_serve uses.

Run: python -m bench export. BENCH_EXPORT_REQUESTS (default 32) and BENCH_SERVE_MAX_TOKENS (default 32) shrink it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench._report import info_line  # noqa: E402
from bench.bench_serve import MAX_TOKENS, NAME, run, tracking_uri  # noqa: E402

N_REQUESTS = int(os.environ.get("BENCH_EXPORT_REQUESTS", 32))


def llamacpp_answers(gguf: Path, convs: list) -> tuple[list, float]:
    """(text, completion tokens) per conversation from llama.cpp, one after another, and the wall time."""
    from ft_pipeline_tests._llamacpp import load

    llm = load(gguf)
    llm.create_chat_completion(messages=convs[0], temperature=0, max_tokens=4)  # warm-up
    out = []
    t0 = time.perf_counter()
    for conv in convs:
        r = llm.create_chat_completion(messages=conv, temperature=0, repeat_penalty=1.0, max_tokens=MAX_TOKENS)
        out.append((r["choices"][0]["message"]["content"], r["usage"]["completion_tokens"]))
    return out, time.perf_counter() - t0


def main() -> int:
    from bench.bench_eval import demo_holdout
    from ft_pipeline.evaluation.scoring import prompt_messages
    from ft_pipeline.export.gguf_bundle import export_gguf
    from ft_pipeline_tests._serving import start_cli_server

    holdout = demo_holdout()
    convs = [prompt_messages(holdout[i % len(holdout)]) for i in range(N_REQUESTS)]
    with tempfile.TemporaryDirectory() as tmp:
        uri = tracking_uri(Path(tmp))
        os.environ["MLFLOW_TRACKING_URI"] = uri
        t0 = time.perf_counter()
        meta = export_gguf(NAME, "champion", Path(tmp) / "gguf", "q8_0")
        seconds = time.perf_counter() - t0
        gguf = Path(tmp) / "gguf" / "model.gguf"
        print(f"# exported version {meta['version']}: {gguf.stat().st_size / 2**20:.1f} MiB Q8_0", flush=True)
        info_line("export.gguf_q8_0_seconds", seconds, "s")
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("# serve.llamacpp_single_stream skipped: llama_cpp is not importable (make llamacpp builds it)")
            return 0
        cpp, t_cpp = llamacpp_answers(gguf, convs)
        proc, url = start_cli_server({**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=HERE.parent,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            run(url, convs[:2], 1)  # warm-up
            served, t_served = run(url, convs, 1)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    cpp_tps = sum(n for _, n in cpp) / t_cpp
    served_tps = sum(n for _, n, _ in served) / t_served
    same = sum(a[0].strip() == b[0].strip() for a, b in zip(cpp, served))
    print(f"# {len(convs)} requests one at a time, max_tokens {MAX_TOKENS}: llama.cpp Q8_0 {cpp_tps:.0f} "
          f"completion tok/s ({t_cpp:.1f}s) vs ft-pipeline serve {served_tps:.0f} ({t_served:.1f}s); identical "
          f"greedy answers {same}/{len(convs)}", flush=True)
    info_line("serve.llamacpp_single_stream", cpp_tps, "tok/s")
    info_line("serve.ft_pipeline_single_stream", served_tps, "tok/s")
    info_line("serve.llamacpp_vs_serve_single_stream", cpp_tps / served_tps, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
