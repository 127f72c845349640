"""Prompting baselines (evaluation/baselines.py): the instruction, the fixed and dynamic few-shot selection, the
prompts, the seeded subset; the cost table and the gate's must_beat_prompting (evaluation/cost.py)."""

import json

import numpy as np
import pytest

from ft_pipeline.evaluation import baselines as bl
from ft_pipeline.evaluation.cache import example_key

PRODUCTS = ["Nimbus 5 laptop", "Zephyr air purifier", "Lumen 4K webcam", "Aurora X2 headphones", "Nova e-reader"]
INTENTS = ["refund_request", "damaged_item", "account_access", "cancel_order"]


def _row(i: int, text: str | None = None, system: str | None = None) -> dict:
    product, intent = PRODUCTS[i % len(PRODUCTS)], INTENTS[i % len(INTENTS)]
    answer = {"intent": intent, "product": product, "order_id": f"ORD-{100000 + i}" if i % 3 else None,
              "urgency": ["low", "medium", "high"][i % 3]}
    user = text or f"Hello, about my {product}: {intent.replace('_', ' ')} please, ticket {i}, order ORD-{100000 + i}"
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": json.dumps(answer)}]
    return {"id": f"train-{i}", "messages": msgs}


TRAIN = [_row(i) for i in range(60)]
HOLDOUT = [_row(1000 + i) | {"id": f"holdout-{i}"} for i in range(12)]


def test_dynamic_shots_are_the_k_most_similar_training_examples_and_never_a_holdout_example():
    k = 5
    # a holdout record that near-duplicates another holdout record: only training rows may be picked
    queries = HOLDOUT + [{"id": "q", "messages": [{"role": "user", "content": user_text}, HOLDOUT[0]["messages"][-1]]}
                         for user_text in [bl.user_text(HOLDOUT[0]) + " thanks"]]
    picked = bl.dynamic_shots(TRAIN, queries, k)
    train_sig, query_sig = bl.user_signatures(TRAIN), bl.user_signatures(queries)
    sim = bl.similarity(query_sig, train_sig)
    holdout_keys = {example_key(r) for r in HOLDOUT}
    for q, shots in enumerate(picked):
        assert len(shots) == k and len(set(shots)) == k
        assert all(0 <= i < len(TRAIN) for i in shots)
        assert not {example_key(TRAIN[i]) for i in shots} & holdout_keys
        # the definition: no training example left out is more similar than one picked; ties to the earlier row
        expected = sorted(range(len(TRAIN)), key=lambda i: (-sim[q, i], i))[:k]
        assert shots == expected
        assert min(sim[q, shots]) >= max(np.delete(sim[q], shots))
    # the similarity is the MinHash estimate of the Jaccard similarity of the user messages' word bigrams
    assert sim[-1].argmax() == sim[0].argmax()


def test_dynamic_shots_skip_multi_turn_training_rows_and_tie_to_the_earlier_row():
    dup = _row(7)
    multi = {"id": "m", "messages": dup["messages"] + dup["messages"][-2:]}  # the same text, but two turns
    train = [multi, _row(3), dup, _row(7)]
    [shots] = bl.dynamic_shots(train, [dup], 2)
    assert shots == [2, 3]  # the two identical single-turn rows, the earlier first; never the multi-turn one


def test_fixed_shots_are_deterministic_distinct_and_from_the_training_set():
    a, b = bl.fixed_shots(TRAIN, 5), bl.fixed_shots(list(TRAIN), 5)
    assert a == b and len(set(a)) == 5
    assert len({TRAIN[i]["messages"][-1]["content"] for i in a}) == 5
    assert bl.fixed_shots(TRAIN, 5, seed=1) != a


def test_prompt_puts_the_instruction_first_and_the_shots_as_prior_turns():
    rec = _row(1, system="old system prompt")
    [r] = bl.records_for(bl.Baseline("few_shot", 2), "INSTRUCTION", TRAIN, [rec])
    msgs = r["messages"]
    assert msgs[0] == {"role": "system", "content": "INSTRUCTION"}
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert msgs[-1] == rec["messages"][-1] and msgs[-2] == rec["messages"][-2]
    shots = [TRAIN[i] for i in r["shot_ids"]]
    assert msgs[1:5] == [m for s in shots for m in s["messages"]]
    [d] = bl.records_for(bl.Baseline("dynamic", 3), "I", TRAIN, [rec])
    near = bl.dynamic_shots(TRAIN, [rec], 3)[0]
    assert d["shot_ids"] == near[::-1]  # the nearest example closest to the request


def test_default_instruction_is_the_commonest_system_prompt_or_derived_from_the_answers():
    assert bl.default_instruction([_row(0, system="A"), _row(1, system="B"), _row(2, system="B")]) == "B"
    derived = bl.default_instruction(TRAIN)
    assert "intent, product, order_id, urgency" in derived
    assert '"low"' in derived and '"cancel_order"' in derived and "null" in derived
    assert "ORD-100001" not in derived  # too many distinct values to list


def test_subset_is_seeded_stable_and_in_order():
    idx = bl.subset(TRAIN, 10)
    assert idx == sorted(idx) and len(set(idx)) == 10
    assert bl.subset(TRAIN, 10) == idx and bl.subset(TRAIN, 0) == list(range(60))
    # growing the set keeps the picked examples that still rank first
    grown = TRAIN + [_row(500 + i) for i in range(5)]
    kept = {example_key(TRAIN[i]) for i in idx} & {example_key(grown[i]) for i in bl.subset(grown, 10)}
    assert len(kept) >= 5


def test_definitions_and_names():
    names = [b.name for b in bl.definitions(bl.KINDS, 5, schema=True)]
    assert names == ["zero_shot", "few_shot_5", "dynamic_5", "zero_shot_schema", "few_shot_5_schema",
                     "dynamic_5_schema"]
    assert [b.name for b in bl.definitions(bl.KINDS, 0, schema=False)] == ["zero_shot"]
    keys = {bl.definition_key(b, "I", "S") for b in bl.definitions(bl.KINDS, 5, schema=True)}
    assert len(keys) == 6
    assert bl.definition_key(bl.Baseline("dynamic", 5), "I") != bl.definition_key(bl.Baseline("dynamic", 5), "J")


@pytest.mark.parametrize("kind", bl.KINDS)
def test_records_keep_the_reference_answer_last(kind):
    recs = bl.records_for(bl.Baseline(kind, 0 if kind == "zero_shot" else 3), "I", TRAIN, HOLDOUT)
    assert [r["messages"][-1] for r in recs] == [h["messages"][-1] for h in HOLDOUT]
    assert [r["id"] for r in recs] == [h["id"] for h in HOLDOUT]


# --- the cost table, the intervals and the gate's must_beat_prompting (evaluation/cost.py) ---

def _rows(fa: list[float], seconds: float, tokens: int) -> list[dict]:
    return [{"json_valid": True, "field_accuracy": f, "exact_match": f == 1.0, "seconds": seconds,
             "prompt_tokens": tokens} for f in fa]


def _report(tuned_fa: list[float], few_fa: list[float]) -> dict:
    from ft_pipeline.evaluation import cost

    n = len(tuned_fa)
    run = {"instruction": "I", "k": 5, "schema_note": "no schema", "subsets": {"holdout": list(range(n))},
           "sets": {"holdout": {"zero_shot": {"per_example": _rows([0.0] * n, 0.5, 120)},
                                "few_shot_5": {"per_example": _rows(few_fa, 1.5, 600)}}}}
    results = {"base": {"per_example": _rows([0.0] * n, 0.6, 40)},
               "tuned": {"per_example": _rows(tuned_fa, 0.5, 40)}}
    return cost.baselines_report(run, results, {}, "field_accuracy", train_seconds=400.0)


def test_cost_table_is_the_arithmetic_of_its_inputs():
    from ft_pipeline.evaluation import cost

    b = _report([1.0, 1.0, 0.5, 1.0], [1.0, 0.5, 0.5, 0.5])
    assert b["best"] == "few_shot_5"
    c = b["cost"]
    assert c["baseline_prompt_tokens"] == 600 and c["tuned_prompt_tokens"] == 40
    assert c["saved_prompt_tokens_per_request"] == 560
    assert c["saved_seconds_per_request"] == pytest.approx(1.0)
    assert c["payback_requests"] == 400  # 400 s of training / 1.0 s saved per request
    md = "\n".join(cost.markdown(b))
    assert "**400 requests**" in md and "few_shot_5" in md and "[" in md
    never = cost.cost_table("x", {"prompt_tokens": 40, "seconds_per_request": 0.4},
                            {"prompt_tokens": 40, "seconds_per_request": 0.5}, 100.0)
    assert never["payback_requests"] is None and "never" in "\n".join(cost.cost_lines(never))
    console = "\n".join(cost.console_lines(b))
    assert "few_shot_5" in console and "paid back after 400 requests" in console
    m = cost.mlflow_metrics(b)
    assert m["baseline/few_shot_5/field_accuracy"] == pytest.approx(0.625) and m["cost/payback_requests"] == 400


def test_wilson_and_normal_intervals():
    from ft_pipeline.evaluation import cost

    lo, hi = cost.wilson(16, 32)
    assert lo == pytest.approx(0.3364, abs=1e-3) and hi == pytest.approx(0.6636, abs=1e-3)
    assert cost.wilson(0, 10)[0] == 0.0 and cost.wilson(10, 10)[1] == 1.0
    lo, hi = cost.mean_ci([0.5, 1.0, 0.75, 0.25])
    assert lo < 0.625 < hi


def test_must_beat_prompting_refuses_a_model_that_does_not_beat_the_best_baseline():
    from ft_pipeline.evaluation import cost

    assert cost.prompting_failure(_report([1.0, 1.0, 0.5, 1.0], [1.0, 0.5, 0.5, 0.5]), "tuned",
                                  "field_accuracy") is None
    why = cost.prompting_failure(_report([0.5, 0.5, 0.5, 0.5], [1.0, 0.5, 0.5, 0.5]), "tuned", "field_accuracy")
    assert why == ("field accuracy 0.500 does not beat the best prompting baseline, few_shot_5 (the base model "
                   "prompted, 0.625 on the same 4 holdout examples)")
    assert "no prompting baselines" in cost.prompting_failure(None, "tuned", "field_accuracy")


@pytest.mark.parametrize("must, tuned_fa, passed", [(True, 0.9, True), (True, 0.5, False), (False, 0.5, True)])
def test_the_gate_check_applies_must_beat_prompting(tmp_path, must, tuned_fa, passed):
    from ft_pipeline.defs.evaluation import GateConfig, beats_base_and_champion
    from ft_pipeline.resources import PipelineHome

    m = lambda fa: dict(json_valid=1.0, field_accuracy=fa, exact_match=fa, chrf=50.0, rouge_l=fa)  # noqa: E731
    report = {"metrics": {"base": m(0.1), "tuned": m(tuned_fa)}, "champion_version": None, "retention_kl": None,
              "baselines": _report([tuned_fa] * 4, [1.0, 0.5, 0.5, 0.5])}
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "evaluation.json").write_text(json.dumps(report))
    config = GateConfig(must_beat_prompting=must, min_gain_over_base=0.05, min_json_valid=0.9, max_retention_kl=None)
    import dagster as dg

    home = PipelineHome(home=str(tmp_path), raw_dir=str(tmp_path))
    res = beats_base_and_champion(dg.build_asset_check_context(), config=config, home=home)
    assert res.passed is passed
    if not passed:
        assert "does not beat the best prompting baseline, few_shot_5" in res.description
        assert "0.500" in res.description and "0.625" in res.description


@pytest.mark.parametrize("knob, expected", [
    ("", "split"),  # the default: the schema the split wrote, the one registered with the model
    ("off", None),
    ("given.json", "given"),
])
def test_the_baselines_run_under_the_split_schema_unless_told_otherwise(tmp_path, monkeypatch, knob, expected):
    from ft_pipeline import settings
    from ft_pipeline.defs.evaluation import EvaluationConfig, _baseline_spec
    from ft_pipeline.resources import PipelineHome

    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path))
    home.split_dir.mkdir(parents=True, exist_ok=True)  # the property makes it
    (home.split_dir / "train.jsonl").write_text(json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": '{"a": "x"}'}]}) + "\n")
    schemas = {"split": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
                         "additionalProperties": False},
               "given": {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"],
                         "additionalProperties": False}}
    (home.split_dir / "output_schema.json").write_text(json.dumps(schemas["split"]))
    monkeypatch.setattr(settings, "REPO_ROOT", tmp_path)
    (tmp_path / "given.json").write_text(json.dumps(schemas["given"]))
    spec = _baseline_spec(EvaluationConfig(baseline_kinds=["zero_shot"], output_schema=knob), home)
    assert spec.schema == (schemas[expected] if expected else None)
    assert [d.name for d in spec.definitions] == ["zero_shot"] + (["zero_shot_schema"] if expected else [])
