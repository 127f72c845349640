"""Token lengths are measured as training sees them (chat template applied), and the policy never truncates."""

import numpy as np
import pytest

from ft_pipeline.data.token_policy import TooManyTokensError, count_tokens, length_summary, too_long, too_long_entry
from ft_pipeline.model.base_models import build_tiny_tokenizer


def conv(text, weight=None):
    a = {"role": "assistant", "content": "ok"} | ({"weight": weight} if weight is not None else {})
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}, a]


def test_counts_match_the_chat_template_tokenization():
    tok = build_tiny_tokenizer()
    examples = [conv("héllo"), conv("x" * 300, weight=0), [{"role": "assistant", "content": "only"}]]
    got = count_tokens(examples, tok, batch=2)  # a batch boundary inside the list
    want = [len(tok.apply_chat_template(e, tokenize=True)["input_ids"]) for e in examples]
    assert got.tolist() == want and want[1] > 300  # byte-level: every character is at least one token


# (token counts, max_tokens, indices too long) — one line a case.
CASES = [
    ([10, 20, 30], 20, [2]),  # exactly max_tokens fits
    ([10, 20, 30], 100, []),  # nothing too long
    ([500, 600], 100, [0, 1]),  # everything too long: all quarantined, none dropped silently
]


@pytest.mark.parametrize("counts,max_tokens,expected", CASES)
def test_quarantine_mask(counts, max_tokens, expected):
    over = too_long(np.array(counts), max_tokens, "quarantine", str)
    assert np.flatnonzero(over).tolist() == expected


def test_fail_names_the_rows():
    where = lambda i: f"d.jsonl line {i + 1}"  # noqa: E731
    with pytest.raises(TooManyTokensError, match=r"2 example\(s\).*d.jsonl line 2 \(30 tokens\), d.jsonl line 3"):
        too_long(np.array([10, 30, 40]), 20, "fail", where)
    assert not too_long(np.array([10, 11, 12]), 20, "fail", where).any()  # nothing to fail on


def test_entry_keeps_provenance_and_reason():
    rec = {"drop": "d.jsonl", "line": 4, "id": "x", "raw_sha256": "ab", "messages": conv("q")}
    e = too_long_entry(rec, 1500, 1024)
    assert (e["drop"], e["line"], e["tokens"], e["code"]) == ("d.jsonl", 4, 1500, "too_many_tokens")
    assert "1500 tokens" in e["reason"] and "1024" in e["reason"] and e["messages"] == rec["messages"]


def test_bad_policy_and_summary():
    with pytest.raises(ValueError, match="on_too_long"):
        too_long(np.array([1]), 5, "truncate", str)
    assert length_summary(np.array([1, 2, 3, 100])) == {"examples": 4, "tokens_p50": 2.5, "tokens_p95": 85.45,
                                                        "tokens_max": 100, "tokens_mean": 26.5}
