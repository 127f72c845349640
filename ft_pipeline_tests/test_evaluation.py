"""Structured-output and free-text metrics, and the promotion gate."""

import pytest

from ft_pipeline.evaluation.report import markdown_report
from ft_pipeline.evaluation.scoring import champion_diff, gate_failures, score
from ft_pipeline.evaluation.text_metrics import chrf, rouge_l

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


# (hypothesis, reference, chrF on sacrebleu's 0-100 scale) — one line a case.
CHRF = [
    ("hello there", "hello there", 100.0),  # identical
    ("hello there", "hellothere", 100.0),  # whitespace is removed before counting n-grams (sacrebleu default)
    ("abc", "xyz", 0.0),  # no character in common
    ("", "abc", 0.0),  # empty hypothesis
    ("abc", "abd", 100 * 7 / 18),  # by hand: P = R = (2/3 + 1/2 + 0) / 3 over orders 1..3 (see chrf's docstring)
    ("ab", "abcd", 100 * 25 / 53),  # by hand: P = 1, R = (2/4 + 1/3) / 2 = 5/12, F2 = 5 P R / (4 P + R) = 25/53
    # sacrebleu's published sentence example (HF datasets' chrF metric card: 61.576379378113785).
    ("The relationship between Obama and Netanyahu is not exactly friendly.",
     "The ties between Obama and Netanyahu are not particularly friendly.", 61.576379378113785),
]


@pytest.mark.parametrize("hyp,ref,expected", CHRF)
def test_chrf(hyp, ref, expected):
    assert chrf(hyp, ref) == pytest.approx(expected, abs=1e-9)


# (hypothesis, reference, ROUGE-L F1) — one line a case.
ROUGE_L = [
    ("the cat sat", "the cat sat", 1.0),  # identical
    ("The Cat, sat!", "the cat sat", 1.0),  # case and punctuation are not words
    ("dog", "the cat sat", 0.0),  # no word in common
    ("", "the cat sat", 0.0),  # empty hypothesis
    ("cat the sat", "the cat sat", 2 / 3),  # by hand: LCS 2 ("cat sat" or "the sat"), P = R = 2/3
    # rouge_score's README example: P = 5/8, R = 5/9 (LCS "the quick brown jumps the"), F = 0.5882352941.
    ("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog", 10 / 17),
]


@pytest.mark.parametrize("hyp,ref,expected", ROUGE_L)
def test_rouge_l(hyp, ref, expected):
    assert rouge_l(hyp, ref) == pytest.approx(expected, abs=1e-9)


def test_score_averages_free_text_metrics_over_examples():
    s = score(["hello there", "abc"], ["hello there", "xyz"])
    assert (s.chrf, s.rouge_l) == (50.0, 0.5)
    assert [r["chrf"] for r in s.per_example] == [100.0, 0.0]


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


def test_gate_on_a_free_text_metric_uses_its_own_units():
    m = {"base": {"json_valid": 0, "chrf": 20.0}, "tuned": {"json_valid": 0, "chrf": 30.0},
         "champion": {"json_valid": 0, "chrf": 31.0}}
    assert gate_failures(m, 0.0, 5.0, 2.0, metric="chrf") == []  # +10 points over base, within 2 of the champion
    assert gate_failures(m, 0.0, 5.0, 0.0, metric="chrf") == ["chrf 30.000 is below the champion's 31.000"]
    with pytest.raises(ValueError, match="gate metric 'bleu'"):
        gate_failures(m, 0.0, 5.0, 0.0, metric="bleu")


def row(field_accuracy, exact_match, chrf_, prediction="p"):
    return {"field_accuracy": field_accuracy, "exact_match": exact_match, "chrf": chrf_, "prediction": prediction}


def test_champion_diff_compares_field_accuracy_then_exact_match_then_chrf():
    recs = [{"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(5)]
    tuned = [row(1.0, True, 90), row(0.5, False, 99), row(0.5, False, 60), row(0.5, False, 50), row(0.5, True, 10)]
    champ = [row(0.5, False, 95), row(1.0, True, 10), row(0.5, False, 50), row(0.5, False, 50), row(0.5, False, 90)]
    diff = champion_diff(recs, tuned, champ)
    assert [r["change"] for r in diff["rows"]] == ["better", "worse", "better", "same", "better"]
    assert diff["counts"] == {"better": 3, "worse": 1, "same": 1}
    assert diff["rows"][1]["prompt"] == "q1" and diff["rows"][1]["id"] == "r1"


def test_report_lists_what_got_better_and_worse_or_says_there_is_no_champion():
    metrics = {k: 0.5 for k in ("json_valid", "field_accuracy", "exact_match", "chrf", "rouge_l", "holdout_loss",
                                "perplexity")}
    results = {"base": {"metrics": metrics}, "tuned": {"metrics": metrics}}
    assert "No champion yet: nothing to compare against." in markdown_report(results, 2, [])
    recs = [{"messages": [{"role": "user", "content": "q|1"}, {"role": "assistant", "content": "a"}]}] * 2
    diff = champion_diff(recs, [row(1, True, 100, "good"), row(0, False, 0, "bad")],
                         [row(0, False, 0, "old"), row(1, True, 100, "old-good")])
    md = markdown_report(results, 2, [], diff, "3")
    assert "Versus champion version 3 on the same 2 examples: **1 better, 1 worse, 0 the same**" in md
    assert "| 0 | q\\|1 | a | old | good |" in md and "| 1 | q\\|1 | a | old-good | bad |" in md


GOOD = {"base": {"json_valid": 0.0, "field_accuracy": 0.1}, "tuned": {"json_valid": 1.0, "field_accuracy": 0.9}}


@pytest.mark.parametrize("kl, max_kl, reasons", [
    (0.5, None, []),       # off (the default, and builtin:tiny's): any drift passes
    (0.05, 0.1, []),       # within the limit
    (0.2, 0.1, ["retention KL 0.2000 > 0.1"]),  # drifted too far from the base on general prompts
    (None, 0.1, ["max_retention_kl is set, but the retention check did not run (a full fine-tune, or "
                 "retention_prompts"]),
])
def test_gate_on_retention(kl, max_kl, reasons):
    got = gate_failures(GOOD, 0.9, 0.05, 0.0, retention_kl=kl, max_retention_kl=max_kl)
    assert [r.split(":")[0] for r in got] == reasons
