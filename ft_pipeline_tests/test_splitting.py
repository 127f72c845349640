"""The split is a function of the example alone: adding a drop never moves an existing example, and no
near-duplicate pair straddles train and holdout."""

import random

import pytest

from ft_pipeline.data.cleaning import example_id, near_dup_key
from ft_pipeline.data.near_dup import NearDupParams
from ft_pipeline.data.splitting import holdout_bucket, holdout_buckets, leaks, split_examples, stratum_of

ND = NearDupParams()
WORDS = ("laptop headphones order refund screen cracked charger missing box delivery late twice card charged "
         "account locked password reset battery drains fast warranty replacement courier tracking address office "
         "home return label colour size broken speaker bulb tablet reader band webcam firmware update app crash "
         "login email invoice discount code tax receipt store pickup monday friday week month urgent soon").split()


def rec(drop, line, text, answer="{}"):
    msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return {"drop": drop, "line": line, "id": example_id(msgs), "near_key": near_dup_key(msgs), "messages": msgs}


def question(i):
    """A 30-word question made of random words: two questions share almost no word pairs."""
    r = random.Random(i)
    words = [r.choice(WORDS) for _ in range(28)]
    return f"Ticket {i}: " + " ".join(words) + ". What can you do about it?"


def sides(split):
    return {r["id"]: "train" for r in split.train} | {r["id"]: "holdout" for r in split.holdout}


def test_adding_a_drop_moves_no_existing_example():
    a = [rec("a", i, f"question {i}") for i in range(500)]
    b = [rec("b", i, f"other question {i}") for i in range(500)]
    before = sides(split_examples({"a": a}, 0.2, seed=3, near_dup=ND))
    after = sides(split_examples({"a": a, "b": b}, 0.2, seed=3, near_dup=ND))
    assert all(after[k] == v for k, v in before.items())
    assert 60 < sum(v == "holdout" for v in before.values()) < 140  # roughly the fraction asked for


def test_a_drop_of_near_duplicates_moves_nothing_and_leaks_nothing():
    a = [rec("2026-01", i, question(i)) for i in range(400)]
    # The new drop re-words half of the old questions (one word) and adds new ones.
    b = [rec("2026-02", i, question(i).replace("What can you do", "What will you do"))
         for i in range(0, 400, 2)] + [rec("2026-02", 1000 + i, question(1000 + i)) for i in range(200)]
    before = split_examples({"2026-01": a}, 0.2, seed=0, near_dup=ND)
    after = split_examples({"2026-01": a, "2026-02": b}, 0.2, seed=0, near_dup=ND)
    assert all(sides(after)[k] == v for k, v in sides(before).items())
    removed = {d["line"]: d for d in after.cross_drop_duplicates}
    assert len(removed) >= 190  # nearly every re-worded question is caught (LSH recall is not 100%)
    assert all(d["method"] == "minhash" and d["duplicate_of"]["drop"] == "2026-01" and
               d["duplicate_of"]["line"] == d["line"] for d in removed.values())
    assert leaks(after.train, after.holdout, ND) == []


def test_leak_check_names_the_pairs_of_a_leaking_split():
    a = [rec("a", i, question(i)) for i in range(100)]
    twin = rec("b", 7, question(7).replace("What can you do", "What will you do"))
    found = leaks(a, [twin, rec("b", 8, "something else entirely, nothing alike")], ND)
    assert [(f["holdout"]["line"], f["train"]["drop"], f["train"]["line"]) for f in found] == [(7, "a", 7)]
    assert 0.8 <= found[0]["similarity"] < 1


def test_without_minhash_a_reworded_copy_would_leak():
    a = [rec("a", i, question(i)) for i in range(300)]
    b = [rec("b", i, question(i).replace("What can you do", "What will you do")) for i in range(300)]
    naive = split_examples({"a": a, "b": b}, 0.3, seed=0, near_dup=None)
    assert leaks(naive.train, naive.holdout, ND)  # the check catches what the normalized key alone misses
    assert leaks(*(lambda s: (s.train, s.holdout))(split_examples({"a": a, "b": b}, 0.3, 0, near_dup=ND)), ND) == []


def test_cross_drop_near_duplicates_are_removed_and_recorded():
    out = split_examples({"a": [rec("a", 1, "Where is my order?")], "b": [rec("b", 9, "where is my ORDER")]}, 0.5, 0)
    assert len(out.train) + len(out.holdout) == 1
    [d] = out.cross_drop_duplicates
    assert (d["drop"], d["line"], d["kind"], d["method"]) == ("b", 9, "near", "normalized")
    assert d["duplicate_of"] == {"id": rec("a", 1, "Where is my order?")["id"], "drop": "a", "line": 1}


def test_seed_changes_membership():
    a = [rec("a", i, f"q{i}") for i in range(200)]
    assert sides(split_examples({"a": a}, 0.3, seed=0)) != sides(split_examples({"a": a}, 0.3, seed=1))


def test_stratified_holdout_share_per_stratum_is_close_to_target():
    intents = ["refund", "cancel_order", "shipping_status", "damaged_item"]
    recs = [rec("a", i, question(i), f'{{"intent": "{intents[i % 4]}"}}') for i in range(4000)]
    out = split_examples({"a": recs}, 0.2, seed=0, near_dup=None, stratify_by="answer.intent")
    assert sorted(out.strata) == sorted(intents)
    for s, c in out.strata.items():
        assert c["train"] + c["holdout"] == 1000
        assert abs(c["holdout_share"] - 0.2) < 0.04, (s, c)  # 4 standard deviations of a 1000-example stratum
    # Stratifying reports and checks the deal; it does not re-deal: sides are the unstratified ones.
    assert sides(out) == sides(split_examples({"a": recs}, 0.2, seed=0, near_dup=None))


@pytest.mark.parametrize("field,answer,expected", [
    ("answer.intent", '{"intent": "refund"}', "refund"),
    ("answer.intent", "not json", "(none)"),  # the answer is free text: no stratum
    ("answer.intent", '["refund"]', "(none)"),  # JSON but not an object
    ("drop", "{}", "a"),  # a record field
    ("nope", "{}", "(none)"),
])
def test_stratum_of(field, answer, expected):
    assert stratum_of(rec("a", 1, "q", answer), field) == expected


def test_reusing_cleaning_signatures_gives_the_same_split():
    from ft_pipeline.data.near_dup import input_side, signatures

    a = [rec("a", i, question(i)) for i in range(200)]
    b = [rec("b", i, question(i).replace("What can you do", "What will you do")) for i in range(0, 200, 3)]
    b += [rec("b", 500, question(3))]  # normalized-exact copy: dropped before the MinHash pass, with its signature
    sigs = {d: signatures([input_side(r["messages"]) for r in rows], ND) for d, rows in (("a", a), ("b", b))}
    fresh = split_examples({"a": a, "b": b}, 0.2, 0, near_dup=ND)
    reused = split_examples({"a": a, "b": b}, 0.2, 0, near_dup=ND, signatures=sigs)
    assert (fresh.train, fresh.holdout, fresh.cross_drop_duplicates) == \
        (reused.train, reused.holdout, reused.cross_drop_duplicates)
    assert len(fresh.cross_drop_duplicates) >= 60


def test_streamed_file_split_equals_the_in_memory_split(tmp_path):
    import json

    from ft_pipeline.data.near_dup import input_side, signatures
    from ft_pipeline.data.splitting import SplitOptions, split_files

    a = [rec("a.jsonl", i, question(i)) for i in range(150)]
    b = [rec("b.jsonl", i, question(i).replace("What can you do", "What will you do")) for i in range(0, 150, 2)]
    b += [rec("b.jsonl", 900 + i, question(900 + i)) for i in range(60)] + [rec("b.jsonl", 999, question(4))]
    paths = {}
    for name, rows in (("a.jsonl", a), ("b.jsonl", b)):
        paths[name] = tmp_path / name
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    want = split_examples({"a.jsonl": a, "b.jsonl": b}, 0.2, 0, near_dup=ND, stratify_by="drop")
    # computed, or cleaning's reused (the signatures of the inputs)
    for sigs in (None, {"a.jsonl": signatures([input_side(r["messages"]) for r in a], ND)}):
        out = tmp_path / f"out{bool(sigs)}"
        out.mkdir()
        manifest = split_files(paths, out, SplitOptions(0.2, 0, ND, "drop"), signatures=sigs)
        got = {n: [json.loads(x) for x in (out / f"{n}.jsonl").read_text().splitlines()]
               for n in ("train", "holdout", "cross_drop_duplicates", "too_long")}
        assert (got["train"], got["holdout"], got["cross_drop_duplicates"]) == \
            (want.train, want.holdout, want.cross_drop_duplicates)
        assert got["too_long"] == [] and manifest["rows_accounted_for"] and manifest["rows_in"] == len(a) + len(b)
        assert manifest["strata"] == want.strata and len(want.cross_drop_duplicates) >= 70


def test_holdout_buckets_are_holdout_bucket_of_each_key():
    """The array form deals exactly as the one-key definition does, for every key and seed (float equality: a
    side flips if a bucket moves by one ulp across holdout_fraction)."""
    keys = [near_dup_key([{"role": "user", "content": question(i)}]) for i in range(2000)]
    for seed in (0, 7):
        got = holdout_buckets(keys, seed).tolist()
        assert got == [holdout_bucket(k, seed) for k in keys]
        assert 0 <= min(got) and max(got) < 1 and len(set(got)) == len(keys)
    assert holdout_buckets([], 0).tolist() == []


def test_holdout_drops_are_the_holdout_and_a_duplicate_of_a_train_row_leaves_the_holdout(tmp_path):
    """A fine-tuning job's validation file: its drop's rows are the holdout, every other drop's rows train, and a
    holdout row that duplicates a train row (exactly or near) is removed from the holdout, even when the holdout
    drop sorts first; streamed and in memory alike."""
    import json

    from ft_pipeline.data.splitting import HoldoutDropsError, SplitOptions, split_files

    train = [rec("b-train.jsonl", i + 1, question(i)) for i in range(100)]
    valid = [rec("a-valid.jsonl", i + 1, question(1000 + i)) for i in range(30)]
    valid += [rec("a-valid.jsonl", 31, question(5)),  # an exact copy of a train row
              rec("a-valid.jsonl", 32, question(6).replace("What can you do", "What will you do"))]  # a near one
    drops = {"a-valid.jsonl": valid, "b-train.jsonl": train}
    out = split_examples(drops, 0.5, 0, near_dup=ND, holdout_drops=["a-valid.jsonl"])
    assert [r["line"] for r in out.holdout] == list(range(1, 31)) and {r["drop"] for r in out.holdout} == {
        "a-valid.jsonl"}
    assert out.train == train  # every train row, none dealt to the holdout by the hash
    assert sorted((d["line"], d["duplicate_of"]["drop"], d["duplicate_of"]["line"])
                  for d in out.cross_drop_duplicates) == [(31, "b-train.jsonl", 6), (32, "b-train.jsonl", 7)]
    assert leaks(out.train, out.holdout, ND) == []
    paths = {}
    for name, rows in drops.items():
        paths[name] = tmp_path / name
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = split_files(paths, tmp_path, SplitOptions(0.5, 0, ND, holdout_drops=("a-valid.jsonl",)))
    got = {n: [json.loads(x) for x in (tmp_path / f"{n}.jsonl").read_text().splitlines()] for n in ("train", "holdout")}
    assert (got["train"], got["holdout"]) == (out.train, out.holdout)
    assert manifest["by_drop"]["holdout"] == {"a-valid.jsonl": 30} and manifest["holdout_drops"] == ["a-valid.jsonl"]
    with pytest.raises(HoldoutDropsError, match="'c.jsonl', which is not among the drops being split"):
        split_files(paths, tmp_path, SplitOptions(0.5, 0, ND, holdout_drops=("c.jsonl",)))
