"""The split is a function of the example alone: adding a drop never moves an existing example."""

from ft_pipeline.core.cleaning import example_id, near_dup_key
from ft_pipeline.core.splitting import split_examples


def rec(drop, line, text):
    msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": "{}"}]
    return {"drop": drop, "line": line, "id": example_id(msgs), "near_key": near_dup_key(msgs), "messages": msgs}


def sides(split):
    return {r["id"]: "train" for r in split.train} | {r["id"]: "holdout" for r in split.holdout}


def test_adding_a_drop_moves_no_existing_example():
    a = [rec("a", i, f"question {i}") for i in range(500)]
    b = [rec("b", i, f"other question {i}") for i in range(500)]
    before = sides(split_examples({"a": a}, 0.2, seed=3))
    after = sides(split_examples({"a": a, "b": b}, 0.2, seed=3))
    assert all(after[k] == v for k, v in before.items())
    assert 60 < sum(v == "holdout" for v in before.values()) < 140  # roughly the fraction asked for


def test_cross_drop_near_duplicates_are_removed_and_recorded():
    out = split_examples({"a": [rec("a", 1, "Where is my order?")], "b": [rec("b", 9, "where is my ORDER")]}, 0.5, 0)
    assert len(out.train) + len(out.holdout) == 1
    assert out.cross_drop_duplicates == [{"drop": "b", "line": 9, "id": rec("b", 9, "where is my ORDER")["id"],
                                          "duplicate_of": {"id": rec("a", 1, "Where is my order?")["id"],
                                                           "drop": "a", "line": 1}}]


def test_seed_changes_membership():
    a = [rec("a", i, f"q{i}") for i in range(200)]
    assert sides(split_examples({"a": a}, 0.3, seed=0)) != sides(split_examples({"a": a}, 0.3, seed=1))
