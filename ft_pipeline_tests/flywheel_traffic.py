"""The traffic of the flywheel test (test_flywheel_e2e.py) and of the drift calibration (docs/flywheel.md): demo-
style support messages, written by the demo data's own generator (data/demo_messages.py) with a seed of their own
(new messages of the same kind, not copies of training rows), and the ten drifting prompts of drift_messages.py,
sent to a running `ft-pipeline serve` with the official openai client and `store=True`.

Calibration (what docs/flywheel.md reports), against a served champion:

    ft-pipeline serve --default-response-format registered &
    python -m ft_pipeline_tests.flywheel_traffic --base-url http://127.0.0.1:8000/v1 --home .ft_pipeline

prints the answer-side measures (schema-valid rate, length-cut rate, mean log-probability against the holdout's)
of the in-distribution messages and of the drifting ones, each as traffic_drift measures a day."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests.drift_messages import DRIFTING

SEED = 1031  # the demo drops are seed 7; any other seed gives new messages of the same kind
MODEL = "ft-pipeline-adapter"


def demo_style(n: int, seed: int = SEED) -> list[tuple[str, str]]:
    """`n` new support messages like the demo's (no personal data in them), each with its right answer (the
    task's JSON, as the demo's generator writes it)."""
    data = REPO_ROOT / "data"
    sys.path.insert(0, str(data))  # demo_messages imports demo_templates as a top-level module
    try:
        spec = importlib.util.spec_from_file_location("demo_messages", data / "demo_messages.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(data))
    gen = mod.Generator(seed)
    return [(r.message, r.answer) for r in (gen.record(allow_pii=False) for _ in range(n))]


def send(client, texts: list[str], batch: str, max_tokens: int = 48) -> list:
    """Each text as one stored chat completion (store=True, metadata app=support and batch=`batch`), in order;
    the completions the client got back."""
    return [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": t}], store=True,
                                           metadata={"app": "support", "batch": batch}, temperature=0,
                                           max_tokens=max_tokens) for t in texts]


def measures(completions: list[dict], home: Path) -> dict:
    """traffic_drift's answer-side measures of stored completions, against the home's last evaluation."""
    import json

    from ft_pipeline.data.lsh import NearDupParams
    from ft_pipeline.traffic import drift

    report = home / "reports" / "evaluation.json"
    ref, _ = drift.reference_logprob(json.loads(report.read_text()) if report.exists() else None)
    r = drift.measure(completions, [], NearDupParams(), drift.Thresholds(), ref)
    return {k: r[k] for k in ("prompts", "json_requests", "schema_valid_rate", "length_cut_rate", "mean_logprob",
                              "holdout_mean_logprob", "logprob_drop")}


def main(argv=None) -> int:
    import argparse

    import openai

    from ft_pipeline.traffic.store import CompletionStore, db_path

    p = argparse.ArgumentParser(description="send the flywheel test's traffic and print its answer measures")
    p.add_argument("--base-url", required=True)
    p.add_argument("--home", required=True, type=Path, help="the served pipeline's FT_PIPELINE_HOME")
    p.add_argument("--demo", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=48)
    args = p.parse_args(argv)
    client = openai.OpenAI(base_url=args.base_url, api_key="x", max_retries=0, timeout=600)
    store = CompletionStore(db_path(args.home))
    for name, texts in (("demo", [m for m, _ in demo_style(args.demo)]), ("drift", DRIFTING)):
        ids = [c.id for c in send(client, texts, f"calibration-{name}", args.max_tokens)]
        print(name, measures([store.get(i) for i in ids], args.home))
    return 0


if __name__ == "__main__":
    sys.exit(main())
