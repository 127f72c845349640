"""Preference-pair drops (ft_pipeline/preference/): each format in each file format parses to the canonical pair,
each bad row is quarantined with its code and line, pairs are redacted, normalized and deduplicated, a prompt
never has pairs on both sides of the split, rows reconcile, and the committed demo drop builds with the counts
data/README.md states."""

import csv
import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ft_pipeline.data.errors import DropError
from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.preference import pairs
from ft_pipeline.preference.pair_formats import to_pair
from ft_pipeline.preference.pairs import build_pairs, is_holdout
from ft_pipeline.settings import REPO_ROOT

Q, C, R = "Where is my order?", "It ships today.", "No idea."
USER = [{"role": "user", "content": Q}]
SYS = {"role": "system", "content": "Be brief."}


def asst(text):
    return [{"role": "assistant", "content": text}]


def write_drop(path: Path, rows: list) -> list[str]:
    """Write rows (dicts, or raw JSONL text) in the file format of path's suffix; returns the JSONL lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    if path.suffix == ".jsonl":
        path.write_text("".join(x + "\n" for x in lines))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return lines


def build(tmp_path, rows, name="d.jsonl", **kw):
    write_drop(tmp_path / "pref" / name, rows)
    manifest = build_pairs(tmp_path / "pref", tmp_path / "out", **kw)
    out = {n: read_jsonl(tmp_path / "out" / f"{n}.jsonl") for n in ("train", "holdout", "quarantine", "duplicates")}
    return manifest, out


# (case, row, format, expected prompt, file formats): each format people export, in the files it fits.
FORMAT_CASES = [
    # OpenAI's preference fine-tuning format, with a system message
    ("openai", {"input": {"messages": [SYS, *USER]}, "preferred_output": asst(C), "non_preferred_output": asst(R)},
     "openai_preference", [SYS, *USER], ("jsonl", "json", "parquet")),
    # TRL plain text: the only form a CSV can hold
    ("trl_text", {"prompt": Q, "chosen": C, "rejected": R}, "trl_preference", USER,
     ("jsonl", "json", "csv", "parquet")),
    # TRL conversational, explicit prompt (what the demo drop uses)
    ("trl_conversational", {"prompt": USER, "chosen": asst(C), "rejected": asst(R)}, "trl_preference", USER,
     ("jsonl", "json", "parquet")),
    # TRL implicit prompt: the shared leading turns (three here) are the prompt
    ("trl_implicit", {"chosen": [SYS, {"role": "user", "content": "Hi"}, *asst("Hello!"), *USER, *asst(C)],
                      "rejected": [SYS, {"role": "user", "content": "Hi"}, *asst("Hello!"), *USER, *asst(R)]},
     "trl_preference", [SYS, {"role": "user", "content": "Hi"}, *asst("Hello!"), *USER], ("jsonl", "json", "parquet")),
    # LLaMA-Factory Alpaca ranking: instruction and input joined as in an SFT Alpaca row
    ("alpaca", {"instruction": "Answer the customer.", "input": Q, "chosen": C, "rejected": R}, "alpaca_preference",
     [{"role": "user", "content": f"Answer the customer.\n\n{Q}"}], ("jsonl", "json", "csv", "parquet")),
    # Alpaca with a system prompt and a history turn
    ("alpaca_system_history", {"system": "Be brief.", "history": [["Hi", "Hello!"]], "instruction": Q, "input": "",
                               "chosen": C, "rejected": R}, "alpaca_preference",
     [SYS, {"role": "user", "content": "Hi"}, *asst("Hello!"), *USER], ("jsonl", "json")),
    # LLaMA-Factory ShareGPT ranking: conversations end in a human turn, the sides are gpt turns
    ("sharegpt", {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": Q}],
                  "chosen": {"from": "gpt", "value": C}, "rejected": {"from": "gpt", "value": R}},
     "sharegpt_preference", [SYS, *USER], ("jsonl", "json", "parquet")),
]


@pytest.mark.parametrize("case,row,fmt,prompt,suffix", [
    pytest.param(*c[:4], s, id=f"{c[0]}-{s}") for c in FORMAT_CASES for s in c[4]])
def test_each_format_in_each_file_format_parses_to_the_canonical_pair(tmp_path, case, row, fmt, prompt, suffix):
    manifest, out = build(tmp_path, [row, row | {}], name=f"d.{suffix}")
    (rec,) = out["train"] + out["holdout"]
    assert {k: rec[k] for k in ("drop", "line", "format", "prompt", "chosen", "rejected")} == {
        "drop": f"d.{suffix}", "line": {"json": 2, "csv": 2}.get(suffix, 1), "format": fmt,
        "prompt": prompt, "chosen": asst(C), "rejected": asst(R)}
    assert set(rec) == {"drop", "line", "format", "raw_sha256", "pair_id", "prompt", "chosen", "rejected"}
    assert manifest["drops"][f"d.{suffix}"] | {"sha256": None} == {
        "sha256": None, "format": fmt, "rows_in": 2, "kept": 1, "quarantined": 0, "duplicates": 1, "erased": 0}
    if suffix == "jsonl":  # the hash of the row's original text, as for SFT rows
        assert rec["raw_sha256"] == hashlib.sha256(json.dumps(row).encode()).hexdigest()


GOOD = {"trl": {"prompt": USER, "chosen": asst(C), "rejected": asst(R)},
        "openai": FORMAT_CASES[0][1], "alpaca": FORMAT_CASES[4][1], "sharegpt": FORMAT_CASES[6][1]}


# (drop format, bad row on line 2, code, a phrase of the reason)
BAD_ROWS = [
    ("trl", '{"prompt": "x", "chosen": ', "malformed_json", "malformed JSON"),  # cut-off export line
    ("trl", "[1, 2]", "wrong_data_type", "expected an object"),  # not an object
    ("trl", {"prompt": Q, "chosen": C}, "missing_field", "missing 'rejected'"),  # says which key
    ("trl", {"prompt": Q, "rejected": R}, "missing_field", "missing 'chosen'"),
    ("trl", {"chosen": C, "rejected": R}, "missing_field", "missing 'prompt'"),  # plain text has no implicit prompt
    ("trl", {"prompt": Q, "chosen": "Same  answer. ", "rejected": "Same answer."}, "chosen_equals_rejected",
     "the same answer"),  # equal once whitespace is normalized
    ("trl", {"chosen": [*USER, *asst(C)], "rejected": [*USER, *asst(C)]}, "chosen_equals_rejected", "same answer"),
    ("trl", {"prompt": Q, "chosen": C, "rejected": ""}, "empty_side", "'rejected' is empty"),
    ("trl", {"prompt": Q, "chosen": "   ", "rejected": R}, "empty_side", "'chosen' is empty"),
    ("trl", {"prompt": USER, "chosen": asst(C), "rejected": []}, "empty_side", "'rejected' is empty"),
    ("trl", {"prompt": USER, "chosen": asst(C) + asst(C), "rejected": asst(R)}, "multi_turn_completion", "2 messages"),
    ("trl", {"chosen": [*USER, *asst("A")], "rejected": [*USER, *asst("B"), *USER, *asst(R)]},
     "multi_turn_completion", "'rejected' has 3 messages"),  # implicit prompt: the conversations diverge early
    ("trl", {"prompt": USER, "chosen": [{"role": "user", "content": C}], "rejected": asst(R)},
     "completion_not_assistant", "'chosen' is a user message"),
    ("trl", {"prompt": [*USER, *asst("ok")], "chosen": asst(C), "rejected": asst(R)}, "prompt_not_user_last",
     "ends with a message from the assistant"),
    ("trl", {"prompt": [SYS], "chosen": asst(C), "rejected": asst(R)}, "no_user_turn", "no user message"),
    ("trl", {"prompt": [*USER, SYS, *USER], "chosen": asst(C), "rejected": asst(R)}, "system_not_first", "first"),
    ("trl", {"prompt": [{"role": "user", "content": 5}], "chosen": asst(C), "rejected": asst(R)}, "wrong_data_type",
     "'content' in prompt message 1 is a int"),  # non-string content
    ("trl", {"prompt": [{"role": "bot", "content": Q}], "chosen": asst(C), "rejected": asst(R)}, "unrecognized_role",
     "'bot'"),
    ("trl", {"prompt": [{"role": "user", "content": ""}], "chosen": asst(C), "rejected": asst(R)}, "empty_turn",
     "prompt message 1"),
    ("trl", '{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}', "invalid_unicode", "unpaired surrogate"),
    ("trl", {"prompt": 3, "chosen": C, "rejected": R}, "wrong_data_type", "'prompt' is a int"),
    ("openai", {"input": {}, "preferred_output": asst(C), "non_preferred_output": asst(R)}, "missing_field",
     "missing 'messages' in 'input'"),
    ("openai", {"input": {"messages": [{"role": "user", "content": [{"type": "text", "text": Q}]}]},
                "preferred_output": asst(C), "non_preferred_output": asst(R)}, "wrong_data_type", "is a list"),
    ("openai", {"input": {"messages": USER}, "preferred_output": asst(C) + asst(R), "non_preferred_output": asst(R)},
     "multi_turn_completion", "'chosen' has 2"),
    ("openai", {"input": {"messages": [*USER, {"role": "assistant", "content": "", "tool_calls": [{"id": 1}]}]},
                "preferred_output": asst(C), "non_preferred_output": asst(R)}, "tool_calls", "not supported"),
    ("alpaca", {"instruction": Q, "chosen": C, "rejected": ["a"]}, "wrong_data_type", "'rejected' is a list"),
    ("alpaca", {"prompt": Q, "chosen": C, "rejected": R}, "missing_field", "missing 'instruction'"),  # a TRL row
    ("sharegpt", {"conversations": [{"from": "human", "value": Q}, {"from": "gpt", "value": "ok"}],
                  "chosen": {"from": "gpt", "value": C}, "rejected": {"from": "gpt", "value": R}},
     "prompt_not_user_last", "ends with a message from the assistant"),  # must end in a human turn
    ("sharegpt", {"conversations": [{"from": "robot", "value": Q}], "chosen": {"from": "gpt", "value": C},
                  "rejected": {"from": "gpt", "value": R}}, "unrecognized_role", "'robot'"),
    ("sharegpt", {"conversations": [{"from": "human", "value": Q}], "chosen": {"from": "human", "value": C},
                  "rejected": {"from": "gpt", "value": R}}, "completion_not_assistant", "'chosen' is a user"),
]


@pytest.mark.parametrize("fmt,bad,code,phrase", BAD_ROWS, ids=[f"{b[0]}-{b[2]}-{i}" for i, b in enumerate(BAD_ROWS)])
def test_each_bad_row_is_quarantined_with_its_code_line_and_original_text(tmp_path, fmt, bad, code, phrase):
    lines = write_drop(tmp_path / "pref" / "d.jsonl", [GOOD[fmt], bad])
    manifest = build_pairs(tmp_path / "pref", tmp_path / "out")
    (q,) = read_jsonl(tmp_path / "out" / "quarantine.jsonl")
    assert (q["drop"], q["line"], q["code"], q["raw"]) == ("d.jsonl", 2, code, lines[1])
    assert phrase in q["reason"], q["reason"]
    assert manifest["quarantine_by_reason"] == {code: 1} and manifest["train"] + manifest["holdout"] == 1


def test_the_rows_of_a_file_decide_its_format(tmp_path):
    """Two Alpaca rows outvote the TRL row before them, which is then quarantined saying what it lacks."""
    manifest, out = build(tmp_path, [GOOD["trl"], GOOD["alpaca"], GOOD["alpaca"] | {"rejected": "Other."}])
    assert manifest["drops"]["d.jsonl"]["format"] == "alpaca_preference"
    assert [(q["line"], q["reason"]) for q in out["quarantine"]] == [(1, "missing 'instruction'")]


@pytest.mark.parametrize("name,rows,seen", [
    ("chat.jsonl", [{"messages": [*USER, *asst(C)]}], "line 1 has keys ['messages']"),  # an SFT drop misplaced
    ("tickets.csv", [{"prompt": Q, "completion": C}], "line 2 has keys ['completion', 'prompt']"),
    ("numbers.json", [1, 2], "line 2 has a JSON int"),
])
def test_a_file_of_no_preference_format_is_a_drop_error_naming_it(tmp_path, name, rows, seen):
    write_drop(tmp_path / "pref" / name, rows)
    with pytest.raises(DropError, match="no row is in a preference format") as e:
        build_pairs(tmp_path / "pref", tmp_path / "out")
    assert str(tmp_path / "pref" / name) in str(e.value) and seen in str(e.value)


def test_pii_is_redacted_and_whitespace_normalized_on_prompt_and_both_sides(tmp_path):
    row = {"prompt": "Mail me at jane.doe@example.com  or call +1 415-555-0132.\r\n",
           "chosen": "Refunded to card 4111 1111 1111 1111.", "rejected": "Paid to DE89 3704 0044 0532 0130 00."}
    _, out = build(tmp_path, [row], holdout_fraction=0.0)
    (rec,) = out["train"]
    assert rec["prompt"] == [{"role": "user", "content": "Mail me at [EMAIL] or call [PHONE]."}]
    assert (rec["chosen"], rec["rejected"]) == (asst("Refunded to card [CARD]."), asst("Paid to [IBAN]."))
    _, out = build(tmp_path / "raw", [row], holdout_fraction=0.0, redact_pii=False)
    assert "jane.doe@example.com" in out["train"][0]["prompt"][0]["content"]


def test_duplicates_after_normalization_point_at_the_kept_pair_across_drops(tmp_path):
    pair = {"prompt": Q, "chosen": C, "rejected": R}
    write_drop(tmp_path / "pref" / "a.jsonl", [pair, pair | {"rejected": "Ask later."}])  # same prompt: no copy
    write_drop(tmp_path / "pref" / "b.csv", [pair | {"prompt": f"  {Q}  "}, pair | {"chosen": "Other."}])
    manifest = build_pairs(tmp_path / "pref", tmp_path / "out")
    (dup,) = read_jsonl(tmp_path / "out" / "duplicates.jsonl")
    kept = {(r["drop"], r["line"]): r
            for name in ("train", "holdout") for r in read_jsonl(tmp_path / "out" / f"{name}.jsonl")}
    assert (dup["drop"], dup["line"]) == ("b.csv", 2)
    assert dup["duplicate_of"] == {"id": kept["a.jsonl", 1]["pair_id"], "drop": "a.jsonl", "line": 1}
    assert sorted(kept) == [("a.jsonl", 1), ("a.jsonl", 2), ("b.csv", 3)]
    assert [manifest["drops"][d]["duplicates"] for d in ("a.jsonl", "b.csv")] == [0, 1]


# (a second pair beside {"prompt": Q, "chosen": C, "rejected": R}, is it a duplicate?) — one line a case: a pair
# is a duplicate only when prompt, chosen and rejected are all the same once normalized.
PAIR_DUPLICATES = [
    ({"prompt": f"  {Q} ", "chosen": f"{C}  ", "rejected": f" {R}"}, True),  # whitespace only
    ({"prompt": Q, "chosen": "It ships tomorrow.", "rejected": R}, False),  # another chosen answer
    ({"prompt": Q, "chosen": C, "rejected": "Ask the courier."}, False),  # another rejected answer
    ({"prompt": Q.replace("Where", "Tell me where"), "chosen": C, "rejected": R}, False),  # another prompt
]


@pytest.mark.parametrize("other,duplicate", PAIR_DUPLICATES)
def test_a_pair_is_a_duplicate_only_when_prompt_and_both_answers_are_the_same(tmp_path, other, duplicate):
    manifest, out = build(tmp_path, [{"prompt": Q, "chosen": C, "rejected": R}, other])
    assert [(d["line"], d["duplicate_of"]["line"]) for d in out["duplicates"]] == ([(2, 1)] if duplicate else [])
    assert manifest["train"] + manifest["holdout"] == (1 if duplicate else 2)


def test_a_prompt_never_has_pairs_on_both_sides_and_sides_do_not_move_when_a_drop_is_added(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {j} for {i}."}
            for i in range(120) for j in range(3)]
    manifest, out = build(tmp_path, rows, holdout_fraction=0.3, seed=5)
    side = {}
    for name in ("train", "holdout"):
        for rec in out[name]:
            assert side.setdefault(rec["prompt"][0]["content"], name) == name, "a prompt on both sides"
            assert (name == "holdout") == is_holdout(rec["prompt"], 0.3, 5)
    assert 10 < sum(s == "holdout" for s in side.values()) < 60 and manifest["train"] + manifest["holdout"] == 360
    # The same prompt in a later drop, with new answers, lands on its prompt's side.
    write_drop(tmp_path / "pref" / "e.jsonl", [{"prompt": f"Question {i}?", "chosen": "New.", "rejected": "Bad."}
                                               for i in range(120)])
    build_pairs(tmp_path / "pref", tmp_path / "out", holdout_fraction=0.3, seed=5)
    for name in ("train", "holdout"):
        assert all(side[r["prompt"][0]["content"]] == name for r in read_jsonl(tmp_path / "out" / f"{name}.jsonl"))


def test_holdout_drops_are_the_holdout_and_a_prompt_with_train_pairs_leaves_it(tmp_path):
    """A DPO job's validation file: its pairs are the holdout, every other drop's train, whatever the hash says; a
    holdout pair whose prompt has a train pair is a duplicate (kind prompt), even when its drop sorts first."""
    train = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {i}."} for i in range(40)]
    valid = [{"prompt": f"Other question {i}?", "chosen": f"Answer {i}.", "rejected": f"Wrong {i}."}
             for i in range(10)] + [{"prompt": "Question 3?", "chosen": "Another.", "rejected": "Bad."}]
    write_drop(tmp_path / "pref" / "b-train.jsonl", train)
    manifest, out = build(tmp_path, valid, name="a-valid.jsonl", holdout_fraction=0.5, holdout_drops=["a-valid.jsonl"])
    assert [r["line"] for r in out["holdout"]] == list(range(1, 11)) and {r["drop"] for r in out["holdout"]} == {
        "a-valid.jsonl"}
    assert [r["line"] for r in out["train"]] == list(range(1, 41)) and manifest["holdout_drops"] == ["a-valid.jsonl"]
    [dup] = out["duplicates"]
    assert (dup["drop"], dup["line"], dup["kind"], dup["duplicate_of"]["line"]) == ("a-valid.jsonl", 11, "prompt", 4)
    with pytest.raises(DropError, match="holdout_drops names 'c.jsonl'"):
        build_pairs(tmp_path / "pref", tmp_path / "out", holdout_drops=["c.jsonl"])


def test_rows_reconcile_per_drop_and_a_lost_row_raises(tmp_path, monkeypatch):
    rows = [GOOD["trl"], GOOD["trl"], "not json", {"prompt": Q, "chosen": C, "rejected": C}]
    manifest, out = build(tmp_path, rows)
    d = manifest["drops"]["d.jsonl"]
    assert (d["rows_in"], d["kept"], d["quarantined"], d["duplicates"]) == (4, 1, 2, 1)
    assert d["sha256"] == hashlib.sha256((tmp_path / "pref" / "d.jsonl").read_bytes()).hexdigest()
    assert manifest["train_sha256"] == hashlib.sha256((tmp_path / "out" / "train.jsonl").read_bytes()).hexdigest()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    clean = pairs.clean_pairs
    monkeypatch.setattr(pairs, "clean_pairs", lambda recs, redact: clean(recs, redact)[:-1])
    with pytest.raises(RuntimeError, match="4 rows in but"):
        build_pairs(tmp_path / "pref", tmp_path / "out2")


def test_erased_rows_and_redacted_lines_are_counted_as_erased_without_their_text(tmp_path):
    secret = "my card 4111 is lost, I am Zoltan Q."
    rows = [{"prompt": secret, "chosen": C, "rejected": R}, GOOD["trl"],
            {"ft_pipeline_erased": "erase-2", "note": "row erased by `ft-pipeline forget`"}]
    lines = write_drop(tmp_path / "pref" / "d.jsonl", rows)
    erased = {hashlib.sha256(lines[0].encode()).hexdigest(): "erase-1"}
    manifest = build_pairs(tmp_path / "pref", tmp_path / "out", erased=erased)
    d = manifest["drops"]["d.jsonl"]
    assert (d["rows_in"], d["kept"], d["quarantined"], d["duplicates"], d["erased"]) == (3, 1, 0, 0, 2)
    gone = read_jsonl(tmp_path / "out" / "erased.jsonl")
    assert [(g["line"], g["erased"]) for g in gone] == [(1, "erase-1"), (3, "erase-2")]
    assert set(gone[0]) == {"drop", "line", "format", "raw_sha256", "erased"}
    assert not [p.name for p in (tmp_path / "out").iterdir() if "Zoltan" in p.read_text()]
    # and without the request the row is kept: the count above is the request's doing
    assert build_pairs(tmp_path / "pref", tmp_path / "out2")["drops"]["d.jsonl"]["kept"] == 2


@pytest.mark.parametrize("make", [
    lambda d: None,  # no folder at all
    lambda d: d.mkdir(),  # an empty folder
    lambda d: (d.mkdir(), (d / ".hidden.jsonl").write_text("x\n"), (d / "notes.txt").write_text("x\n")),  # ignored
])
def test_no_drops_give_an_all_zero_result(tmp_path, make):
    make(tmp_path / "pref")
    manifest = build_pairs(tmp_path / "pref", tmp_path / "out")
    assert ((manifest["drops"], manifest["train"], manifest["holdout"], manifest["quarantine_by_reason"])
            == ({}, 0, 0, {}))
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == b""


def test_implicit_prompt_is_the_longest_shared_prefix():
    """Conversations that differ only in the last answer share everything before it; TRL's extract_prompt."""
    convo = [SYS, *USER, *asst("Which order?"), {"role": "user", "content": "ORD-123456"}]
    got = to_pair({"chosen": [*convo, *asst(C)], "rejected": [*convo, *asst(R)]}, "trl_preference")
    assert got == {"prompt": convo, "chosen": asst(C), "rejected": asst(R)}


def _readme_counts() -> dict[str, int]:
    text = (REPO_ROOT / "data" / "README.md").read_text()
    table = text[text.index("| | `preferences/2026-04-preferences.jsonl` |"):].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^\| (.+?) \| (\d+) \|$", table, re.M)}


def _error_kind(chosen: str, rejected: str) -> str:
    c, r = json.loads(chosen), json.loads(rejected)
    if set(r) != set(c):
        return "rejected: a field missing"
    (key,) = [k for k in c if c[k] != r[k]]
    if key == "order_id":
        if r[key] is None:
            return "rejected: order_id null where the message has one"
        assert sum(a != b for a, b in zip(c[key], r[key])) == 1
        return "rejected: one digit of the order id changed"
    return {"intent": "rejected: a neighbouring intent", "urgency": "rejected: the wrong urgency"}[key]


def test_the_committed_demo_drop_builds_with_the_counts_the_readme_states(tmp_path):
    want = _readme_counts()
    manifest = build_pairs(REPO_ROOT / "data" / "raw" / "preferences", tmp_path / "out")
    (d,) = manifest["drops"].values()
    assert (d["format"], d["rows_in"], d["kept"], d["quarantined"], d["duplicates"]) == (
        "trl_preference", want["pairs (lines)"], want["expected kept"], want["expected quarantined"],
        want["expected duplicates"])
    assert manifest["quarantine_by_reason"] == {"chosen_equals_rejected": want["bad: chosen identical to rejected"],
                                                "empty_side": want["bad: empty rejected"]}
    kept = read_jsonl(tmp_path / "out" / "train.jsonl") + read_jsonl(tmp_path / "out" / "holdout.jsonl")
    kinds = Counter(_error_kind(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in kept)
    assert kinds == {k: n for k, n in want.items() if k.startswith("rejected:")}
    assert sum(kinds.values()) == want["expected kept"] and manifest["holdout"] > 0
    assert want["pairs whose prompt has an email and/or phone number"] > 0
    assert any("[EMAIL]" in r["prompt"][0]["content"] or "[PHONE]" in r["prompt"][0]["content"] for r in kept)


def test_the_generator_rewrites_every_committed_drop_byte_for_byte(tmp_path):
    subprocess.run([sys.executable, "-B", str(REPO_ROOT / "data" / "generate_demo.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    raw = REPO_ROOT / "data" / "raw"
    # routing/ is the routing task's, from data/generate_routing.py (test_tasks.py)
    committed = sorted(p.relative_to(raw) for p in raw.rglob("*")
                       if p.is_file() and p.relative_to(raw).parts[0] != "routing")
    assert (len(committed) == 4
            and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == committed)
    for rel in committed:
        assert (tmp_path / rel).read_bytes() == (raw / rel).read_bytes(), rel
