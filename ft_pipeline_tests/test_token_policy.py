"""Token lengths are measured as training sees them (chat template applied), and the policy never truncates."""

import numpy as np
import pytest

from ft_pipeline.core.base_models import build_tiny_tokenizer
from ft_pipeline.core.token_policy import TooManyTokensError, apply_length_policy, count_tokens, length_summary


def conv(text, weight=None):
    a = {"role": "assistant", "content": "ok"} | ({"weight": weight} if weight is not None else {})
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}, a]


def test_counts_match_the_chat_template_tokenization():
    tok = build_tiny_tokenizer()
    examples = [conv("héllo"), conv("x" * 300, weight=0), [{"role": "assistant", "content": "only"}]]
    got = count_tokens(examples, tok, batch=2)  # a batch boundary inside the list
    want = [len(tok.apply_chat_template(e, tokenize=True)["input_ids"]) for e in examples]
    assert got.tolist() == want and want[1] > 300  # byte-level: every character is at least one token


def recs(n):
    return [{"drop": "d.jsonl", "line": i + 1, "id": f"id{i}", "messages": conv("q")} for i in range(n)]


# (token counts, max_tokens, lines kept, lines quarantined) — one line a case.
CASES = [
    ([10, 20, 30], 20, [1, 2], [3]),  # exactly max_tokens fits
    ([10, 20, 30], 100, [1, 2, 3], []),  # nothing too long
    ([500, 600], 100, [], [1, 2]),  # everything too long: all quarantined, none dropped silently
]


@pytest.mark.parametrize("counts,max_tokens,kept,quarantined", CASES)
def test_quarantine(counts, max_tokens, kept, quarantined):
    out = apply_length_policy(recs(len(counts)), np.array(counts), max_tokens, "quarantine")
    assert [r["line"] for r in out.kept] == kept
    assert [(q["line"], q["tokens"], q["code"]) for q in out.too_long] == [(i, counts[i - 1], "too_many_tokens")
                                                                          for i in quarantined]
    assert len(out.kept) + len(out.too_long) == len(counts)


def test_fail_names_the_rows():
    with pytest.raises(TooManyTokensError, match=r"2 example\(s\).*d.jsonl line 2 \(30 tokens\), d.jsonl line 3"):
        apply_length_policy(recs(3), np.array([10, 30, 40]), 20, "fail")
    assert len(apply_length_policy(recs(3), np.array([10, 11, 12]), 20, "fail").kept) == 3  # nothing to fail on


def test_bad_policy_and_summary():
    with pytest.raises(ValueError, match="on_too_long"):
        apply_length_policy(recs(1), np.array([1]), 5, "truncate")
    assert length_summary(np.array([1, 2, 3, 100])) == {"examples": 4, "tokens_p50": 2.5, "tokens_p95": 85.45,
                                                        "tokens_max": 100, "tokens_mean": 26.5}
