"""A duplicate has the answer of the row it duplicates: near-duplicate inputs whose answers differ are a contrast
that teaches the task, and are kept, within a drop and across drops. One input with different answers is a
label conflict: kept, quarantined or settled for the latest row as the `conflicts` knob says, reported, and every
row still accounted for."""

import json

import pytest

from ft_pipeline.data import near_dup
from ft_pipeline.data.cleaning import CleaningOptions, canonicalize, clean_records, clean_stream
from ft_pipeline.data.formats import read_drop
from ft_pipeline.data.near_dup import NearDupParams
from ft_pipeline.data.splitting import SplitOptions, split_examples, split_files

ND = NearDupParams()
MSG = ("Hi team, my Nimbus 5 laptop arrived yesterday with a cracked screen, the charger is missing from the box "
       "and the keyboard has two dead keys. The courier left it at the door in the rain. Order ORD-482913, "
       "please send a replacement or tell me how to send it back.")
NO_ID = MSG.replace(" Order ORD-482913,", "")


def answer(intent="damaged_item", order="ORD-482913", urgency="medium"):
    return json.dumps({"intent": intent, "product": "Nimbus 5 laptop", "order_id": order, "urgency": urgency})


def chat(user, assistant):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


# (first row, second row, is the second a duplicate of the first?) — one line a case; every pair is near on
# the input side (checked below), so only the answers decide.
PAIRS = [
    ((MSG, answer()), (MSG + " No rush.", answer(urgency="low")), False),  # urgency cue added
    ((MSG, answer()), (MSG + " This is urgent.", answer(urgency="high")), False),  # the other cue
    ((NO_ID, answer(order=None)), (NO_ID + " ref ORD-304287", answer(order="ORD-304287")), False),  # order id added
    ((MSG, answer()), (MSG.replace("send a replacement", "send a refund"), answer(intent="refund")), False),  # intent
    ((MSG, answer()), (MSG.replace("Hi team,", "Hello,"), answer()), True),  # reworded, the same answer
    ((MSG, answer()), (MSG.replace("cracked", "broken") + " Thanks!", answer()), True),  # two edits, the same answer
    ((MSG, answer()), (MSG.replace("Hi team,", "Hello,"), answer().replace(", ", ",")), True),  # answer spacing
]


def exact_input_jaccard(a: str, b: str) -> float:
    sa, sb = (near_dup.shingles([{"role": "user", "content": t}], ND.ngram) for t in (a, b))
    return len(sa & sb) / len(sa | sb)


def drop(tmp_path, rows: list[str], name="d.jsonl") -> list[dict]:
    p = tmp_path / name
    p.write_text("".join(r + "\n" for r in rows))
    return canonicalize(read_drop(p), "openai_chat")


@pytest.mark.parametrize("first,second,duplicate", PAIRS)
def test_a_near_duplicate_input_is_a_duplicate_only_with_the_same_answer(tmp_path, first, second, duplicate):
    assert exact_input_jaccard(first[0], second[0]) >= ND.threshold + 0.05  # clear of the threshold
    # within one drop
    out = clean_records(drop(tmp_path, [chat(*first), chat(*second)]))
    assert [(d["line"], d["duplicate_of"]["line"]) for d in out.duplicates] == ([(2, 1)] if duplicate else [])
    assert [r["line"] for r in out.kept] == ([1] if duplicate else [1, 2])
    # across drops: cleaned apart, split together (cleaning's signatures reused)
    a, b = (clean_records(drop(tmp_path, [chat(*row)], n)) for row, n in ((first, "a.jsonl"), (second, "b.jsonl")))
    split = split_examples({"a.jsonl": a.kept, "b.jsonl": b.kept}, 0.5, 0, ND,
                           signatures={"a.jsonl": a.signatures, "b.jsonl": b.signatures})
    assert [(d["drop"], d["duplicate_of"]["drop"]) for d in split.cross_drop_duplicates] == (
        [("b.jsonl", "a.jsonl")] if duplicate else [])
    assert len(split.train) + len(split.holdout) == (1 if duplicate else 2)


def _answer_words(messages) -> bytes:
    """An answer as the dedup compares it (near_dup.normalized's words, spelled out here on purpose)."""
    return b" ".join(near_dup.normalized([m for m in messages if m["role"] == "assistant"]).split())


def test_no_removed_duplicate_of_the_demo_drops_has_another_answer():
    from ft_pipeline.data.formats import detect_format, find_drops
    from ft_pipeline.settings import REPO_ROOT

    drops, _ = find_drops(REPO_ROOT / "data" / "raw")
    answers, kept, sigs, removed = {}, {}, {}, []
    for name, path in sorted(drops.items()):
        parsed = read_drop(path)
        records = canonicalize(parsed, detect_format(parsed.rows, path))
        answers |= {(r["drop"], r["line"]): _answer_words(r["messages"]) for r in records if "messages" in r}
        out = clean_records(records)
        kept[name], sigs[name] = out.kept, out.signatures
        removed += out.duplicates
        assert out.rows_in == len(out.kept) + len(out.quarantined) + len(out.duplicates)
    removed += split_examples(kept, 0.1, 0, ND, signatures=sigs).cross_drop_duplicates
    differ = [(d["drop"], d["line"], d["duplicate_of"]["drop"], d["duplicate_of"]["line"]) for d in removed
              if answers[d["drop"], d["line"]] != answers[d["duplicate_of"]["drop"], d["duplicate_of"]["line"]]]
    assert differ == [] and len(removed) > 150


OTHER = chat("Can I change the delivery address of order ORD-120934 to my office?",
             answer(intent="shipping_status", order="ORD-120934"))
LOW = answer(urgency="low")

# conflicts: (rows of a drop, kept lines, quarantined lines, duplicates as (line, kind, of line)) per knob value.
# Lines 1 and 3 are one row and its copy; line 2 has the same input, re-labelled; line 4 is another request.
WITHIN = [chat(MSG, answer()), chat(MSG, LOW), chat(MSG, answer()), OTHER]
CONFLICTS = [
    ("keep", WITHIN, [1, 2, 4], [], [(3, "exact", 1)]),  # the default: both answers stay, reported
    ("quarantine", WITHIN, [4], [1, 2, 3], []),  # every row of the input, its copy too, for a person to decide
    ("latest", WITHIN, [1, 4], [], [(2, "conflict_replaced", 1), (3, "exact", 1)]),  # line 3 is the last
    ("latest", WITHIN[:2] + [OTHER], [2, 3], [], [(1, "conflict_replaced", 2)]),  # line 2 is the last
]


@pytest.mark.parametrize("how,rows,kept,quarantined,duplicates", CONFLICTS)
def test_conflicts_within_a_drop_by_knob(tmp_path, how, rows, kept, quarantined, duplicates):
    out = clean_stream(drop(tmp_path, rows), tmp_path / "kept.jsonl", CleaningOptions(conflicts=how), chunk_rows=2,
                       workers=0)
    got = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [r["line"] for r in got] == kept
    assert [(q["line"], q["code"]) for q in out.quarantined] == [(n, "label_conflict") for n in quarantined]
    assert [(d["line"], d["kind"], d["duplicate_of"]["line"]) for d in out.duplicates] == duplicates
    assert out.rows_in == len(rows) == out.kept_count + len(out.quarantined) + len(out.duplicates)
    [conflict] = out.conflicts  # reported whatever the knob: each row with its answer
    assert [(r["line"], json.loads(r["answer"])["urgency"]) for r in conflict["rows"]] == [
        (n, "low" if row == WITHIN[1] else "medium") for n, row in enumerate(rows, 1) if row != OTHER]
    assert conflict["input"] == MSG and out.stats()["conflicts"] == 1
    for q in out.quarantined:
        assert q["raw"] == rows[q["line"] - 1]  # the original text, as every quarantined row keeps it
        assert "label conflict" in q["reason"] and ("line 2" in q["reason"]) != (q["line"] == 2)
    replaced = [d for d in out.duplicates if d["kind"] == "conflict_replaced"]
    assert all("conflicts=latest" in d["reason"] for d in replaced)


@pytest.mark.parametrize("how", ["keep", "quarantine", "latest"])
def test_conflicts_across_drops_by_knob_in_memory_and_streamed(tmp_path, how):
    """A re-labelled export: the newer drop answers the same message differently."""
    old = clean_records(drop(tmp_path, [chat(MSG, answer()), OTHER], "2026-01.jsonl"))
    new = clean_records(drop(tmp_path, [chat("Where is my Halo smart bulb?", answer()), chat(MSG, LOW)],
                             "2026-02.jsonl"))
    drops = {"2026-01.jsonl": old.kept, "2026-02.jsonl": new.kept}
    split = split_examples(drops, 0.5, 0, ND, conflicts=how)
    kept = sorted((r["drop"], r["line"]) for r in split.train + split.holdout)
    both = [("2026-01.jsonl", 1), ("2026-02.jsonl", 2)]
    assert kept == {"keep": sorted(both + [("2026-01.jsonl", 2), ("2026-02.jsonl", 1)]),
                    "quarantine": [("2026-01.jsonl", 2), ("2026-02.jsonl", 1)],
                    "latest": [("2026-01.jsonl", 2), ("2026-02.jsonl", 1), ("2026-02.jsonl", 2)]}[how]
    assert [(q["drop"], q["line"], q["conflicts_with"]) for q in split.quarantined] == (
        [] if how != "quarantine" else [(*both[0], [dict(zip(("drop", "line"), both[1]))]),
                                        (*both[1], [dict(zip(("drop", "line"), both[0]))])])
    assert [(d["drop"], d["line"], d["kind"], d["duplicate_of"]["drop"]) for d in split.cross_drop_duplicates] == (
        [("2026-01.jsonl", 1, "conflict_replaced", "2026-02.jsonl")] if how == "latest" else [])
    [conflict] = split.conflicts
    assert [(r["drop"], r["line"], json.loads(r["answer"])["urgency"]) for r in conflict["rows"]] == [
        (*both[0], "medium"), (*both[1], "low")]
    assert len(split.train + split.holdout + split.quarantined + split.cross_drop_duplicates) == 4
    # The streamed split (what train_set runs) decides and writes the same.
    paths = {}
    for name, rows in drops.items():
        paths[name] = tmp_path / name
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "out").mkdir()
    manifest = split_files(paths, tmp_path / "out", SplitOptions(0.5, 0, ND, conflicts=how))
    got = {n: [json.loads(x) for x in (tmp_path / "out" / f"{n}.jsonl").read_text().splitlines()]
           for n in ("train", "holdout", "cross_drop_duplicates", "quarantined_conflicts", "conflicts")}
    assert (got["train"], got["holdout"], got["cross_drop_duplicates"], got["quarantined_conflicts"],
            got["conflicts"]) == (split.train, split.holdout, split.cross_drop_duplicates, split.quarantined,
                                  split.conflicts)
    assert manifest["rows_accounted_for"] and manifest["rows_in"] == 4
    assert (manifest["conflicts"], manifest["conflict_rows"], manifest["conflict_policy"]) == (1, 2, how)


def test_a_contrast_across_the_split_is_no_leak():
    """The leak check recomputes near-duplicates the split's way: the same answer, near on the input."""
    from ft_pipeline.data.splitting import leaks

    def rec(drop, line, user, assistant):
        return {"drop": drop, "line": line, "id": f"{drop}{line}",
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}

    train = [rec("a", 1, MSG, answer())]
    assert leaks(train, [rec("b", 1, MSG + " No rush.", LOW)], ND) == []
    assert [p["holdout"]["line"] for p in leaks(train, [rec("b", 2, MSG + " Thanks!", answer())], ND)] == [2]
