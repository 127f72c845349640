"""Structured-output metrics and the promotion gate."""

import pytest

from ft_pipeline.core.evaluation import gate_failures, score

REF = '{"intent": "refund", "order_id": "ORD-1", "urgency": "high", "product": "X"}'

# (prediction, json_valid, field_accuracy, exact_match) — one line a case.
CASES = [
    (REF, True, 1.0, True),
    ('{"urgency": "high", "product": "X", "order_id": "ORD-1", "intent": "refund"}', True, 1.0, True),  # key order
    ('{"intent": "refund", "order_id": "ORD-2", "urgency": "high", "product": "X"}', True, 0.75, False),
    ('{"intent": "refund"}', True, 0.25, False),  # missing fields count as wrong
    ('{"intent": "refund", "order_id": "ORD-1", "urgency": "high", "product": "X"', False, 0.0, False),  # truncated
    ('["refund"]', False, 0.0, False),  # JSON, but not an object
    ("", False, 0.0, False),
]


@pytest.mark.parametrize("pred,valid,fields,exact", CASES)
def test_score_one(pred, valid, fields, exact):
    s = score([pred], [REF])
    assert (s.json_valid, s.field_accuracy, s.exact_match) == (float(valid), fields, float(exact))


def test_score_free_text_reference_uses_exact_string_match():
    s = score(["hello there", "bye"], ["hello there", "hi"])
    assert (s.json_valid, s.exact_match) == (0.0, 0.5)


M = lambda valid, fields: {"json_valid": valid, "field_accuracy": fields}  # noqa: E731

# (metrics, number of reasons to refuse) — thresholds 0.9 valid, +0.05 over base, no loss vs champion.
GATE = [
    ({"base": M(0, 0.1), "tuned": M(1, 0.5)}, 0),  # first model: beats base
    ({"base": M(0, 0.1), "tuned": M(0.8, 0.5)}, 1),  # too little valid JSON
    ({"base": M(0, 0.48), "tuned": M(1, 0.5)}, 1),  # does not beat base by the margin
    ({"base": M(0, 0.1), "tuned": M(1, 0.5), "champion": M(1, 0.5)}, 0),  # ties the champion
    ({"base": M(0, 0.1), "tuned": M(1, 0.5), "champion": M(1, 0.6)}, 1),  # worse than the champion
    ({"base": M(0, 0.6), "tuned": M(0.5, 0.5), "champion": M(1, 0.6)}, 3),  # every reason at once
]


@pytest.mark.parametrize("metrics,n_reasons", GATE)
def test_gate(metrics, n_reasons):
    assert len(gate_failures(metrics, 0.9, 0.05, 0.0)) == n_reasons
