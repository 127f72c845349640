"""Cleaning: normalization, redaction, quarantine with reasons, dedup, and exact row accounting."""

import json
from collections import Counter

import pytest

from ft_pipeline.data.cleaning import CleaningOptions, canonicalize, clean_records, normalize_text, redact
from ft_pipeline.data.formats import read_drop

# (text, expected after redaction, kinds counted) — one line a case.
REDACT = [
    ("mail jo.smith+x@example.com now", "mail [EMAIL] now", {"EMAIL": 1}),
    ("call +1 415-555-0132 or (212) 555-0187", "call [PHONE] or [PHONE]", {"PHONE": 2}),
    ("card 4111 1111 1111 1111 please", "card [CARD] please", {"CARD": 1}),  # Luhn-valid
    ("card 4111 1111 1111 1112 please", "card 4111 1111 1111 1112 please", {}),  # fails Luhn: not a card
    ("iban DE89 3704 0044 0532 0130 00 ok", "iban [IBAN] ok", {"IBAN": 1}),  # IBAN first, not read as a card
    ("order ORD-482913 is late", "order ORD-482913 is late", {}),  # order ids are task data, kept
]


@pytest.mark.parametrize("text,expected,kinds", REDACT)
def test_redact(text, expected, kinds):
    counts = Counter()
    assert redact(text, counts) == expected
    assert dict(counts) == kinds


@pytest.mark.parametrize("text,expected", [
    ("  a   b \r\n c\t \n", "a b\n c"),  # spaces collapse, CRLF becomes LF, outer whitespace goes
    ("e\u0301", "\u00e9"),  # NFC
])
def test_normalize(text, expected):
    assert normalize_text(text) == expected


def _drop(tmp_path, rows: list[str]):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(rows) + "\n")
    return canonicalize(read_drop(p), "openai_chat")


def chat(user, assistant="{}"):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_every_row_is_kept_quarantined_or_a_duplicate(tmp_path):
    rows = [chat("Where is my order?"), chat("Where is my order?"), chat("where is my  order"),
            chat("x" * 50), '{"messages": [', chat("hello", "  "), chat("a different one")]
    out = clean_records(_drop(tmp_path, rows), CleaningOptions(max_chars=40))
    assert out.rows_in == 7 == len(out.kept) + len(out.quarantined) + len(out.duplicates)
    assert [r["line"] for r in out.kept] == [1, 7]
    assert ([(d["line"], d["kind"], d["duplicate_of"]["line"]) for d in out.duplicates]
            == [(2, "exact", 1), (3, "near", 1)])
    assert {q["line"]: q["code"] for q in out.quarantined} == {4: "too_long", 5: "malformed_json", 6: "empty_turn"}
    q4 = next(q for q in out.quarantined if q["line"] == 4)
    assert q4["raw"] == rows[3] and "52 characters, the limit is 40" in q4["reason"]  # original text kept


def test_redaction_can_be_turned_off(tmp_path):
    recs = _drop(tmp_path, [chat("write to a@example.com")])
    assert "[EMAIL]" in clean_records(recs).kept[0]["messages"][0]["content"]
    assert "a@example.com" in clean_records(recs, CleaningOptions(redact_pii=False)).kept[0]["messages"][0]["content"]


def test_demo_drops_account_for_every_row():
    from ft_pipeline.data.formats import detect_format, find_drops
    from ft_pipeline.settings import REPO_ROOT

    drops, problems = find_drops(REPO_ROOT / "data" / "raw")
    assert problems == []
    assert len(drops) >= 3
    formats_seen = set()
    for name, path in drops.items():
        parsed = read_drop(path)
        fmt = detect_format(parsed.rows, path)
        formats_seen.add(fmt)
        out = clean_records(canonicalize(parsed, fmt))
        assert out.rows_in == len(out.kept) + len(out.quarantined) + len(out.duplicates), name
        assert out.quarantined and out.duplicates and out.pii_counts, name  # the demo data is messy on purpose
    assert formats_seen == {"openai_chat", "alpaca", "prompt_completion"}


def test_one_huge_line_is_quarantined_not_truncated(tmp_path):
    huge = chat("log: " + "x" * 1_000_000)
    out = clean_records(_drop(tmp_path, [chat("fine"), huge]))
    assert [r["line"] for r in out.kept] == [1]
    assert out.quarantined[0]["line"] == 2 and out.quarantined[0]["code"] == "too_long"
    assert out.quarantined[0]["raw"] == huge  # the original row, whole


LONG = ("Hi, my Nimbus 5 laptop arrived with a cracked screen and the charger is missing from the box. The "
        "courier left it at the door in the rain. Order ORD-482913. Please send a replacement or tell me how to "
        "return it and get my money back, I need a working laptop for work by Friday.")


def test_minhash_near_duplicates_point_at_the_kept_example(tmp_path):
    reworded = LONG.replace("Hi,", "Hello,")
    rows = [chat(LONG), chat(reworded), chat(reworded), chat("A different question about my invoice.")]
    out = clean_records(_drop(tmp_path, rows))
    assert [r["line"] for r in out.kept] == [1, 4]
    got = [(d["line"], d["kind"], d["method"], d["duplicate_of"]["line"]) for d in out.duplicates]
    # Line 3 is an exact copy of line 2, which is itself a near-duplicate of line 1: it points at line 1, kept.
    assert got == [(2, "near", "minhash", 1), (3, "exact", "exact", 1)]
    assert 0.8 <= out.duplicates[0]["similarity"] < 1
    no_minhash = clean_records(_drop(tmp_path, rows), CleaningOptions(near_dup=None))
    assert [r["line"] for r in no_minhash.kept] == [1, 2, 4]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ft_pipeline.data.cleaning import normalize_many, redact_many  # noqa: E402

PIECES = st.sampled_from([" ", "  ", "\t", "\r\n", "\n", "\u00a0", "\u2003", "e\u0301", "a", "Zz", "@", ".", "-",
                          "jo@example.com", "+1 415-555-0132", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00",
                          "(212) 555-0187", "ORD-482913", "\x00", "\u0301"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(PIECES, max_size=12).map("".join), max_size=6))
def test_batch_normalize_and_redact_equal_one_at_a_time(texts):
    assert normalize_many(texts) == [normalize_text(t) for t in texts]
    one, many = Counter(), Counter()
    assert redact_many(texts, many) == [redact(t, one) for t in texts]
    assert one == many


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.lists(PIECES, max_size=8).map("".join)),
                         min_size=1, max_size=3), max_size=5))
def test_batch_near_dup_keys_equal_one_at_a_time(convs):
    from ft_pipeline.data.cleaning import near_dup_key, near_dup_keys
    from ft_pipeline.data.keys import answer_keys, example_keys, side_keys

    examples = [[{"role": r, "content": c + "_x_ÉÈ—'"} for r, c in conv] for conv in convs]
    assert near_dup_keys(examples) == [near_dup_key(e) for e in examples]
    assert example_keys(examples) == [(near_dup_key(e), *side_keys(e)) for e in examples]
    assert answer_keys(examples) == [side_keys(e)[1] for e in examples]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=30)), min_size=1, max_size=3))
def test_example_id_is_sha256_of_the_compact_json(conv):
    import hashlib

    from ft_pipeline.data.cleaning import example_id

    messages = [{"role": r, "content": c} for r, c in conv]
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    assert example_id(messages) == hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from(["user", "system"]),
                                   st.text(alphabet=st.characters(max_codepoint=127), max_size=25)),
                         min_size=1, max_size=3), max_size=5))
def test_ascii_near_dup_keys_equal_the_regex_ones(convs):
    from ft_pipeline.data.cleaning import near_dup_key, near_dup_keys
    from ft_pipeline.data.keys import example_keys, side_keys

    examples = [[{"role": r, "content": c} for r, c in conv] for conv in convs]
    assert near_dup_keys(examples) == [near_dup_key(e) for e in examples]
    assert example_keys(examples) == [(near_dup_key(e), *side_keys(e)) for e in examples]


def test_stream_in_chunks_and_worker_processes_gives_the_same_files(tmp_path):
    """Chunk boundaries and worker processes change nothing: the kept file, duplicates (each naming the example
    it duplicates, across chunks), quarantine, personal data counts and signatures are those of one pass."""
    import numpy as np

    from ft_pipeline.data.cleaning import clean_stream
    from ft_pipeline.jsonl import write_jsonl

    words = "order refund late broken screen charger box card account reset please help".split()
    rows = []
    for i in range(300):
        text = " ".join(words[(i * 7 + k) % len(words)] for k in range(12)) + f" ticket {i % 97}"
        rows.append(chat(text + (" mail a@example.com" if i % 11 == 0 else ""), json.dumps({"n": i % 97})))
        if i % 13 == 0:
            rows.append("{not json")
    rows += rows[:200:20]  # exact copies, chunks after their originals
    raw = tmp_path / "raw.jsonl"
    write_jsonl(raw, _drop(tmp_path, rows))
    one = clean_stream(raw.read_text().splitlines(keepends=True), tmp_path / "one.jsonl", chunk_rows=10_000, workers=0)
    many = clean_stream(raw.read_bytes().splitlines(keepends=True), tmp_path / "many.jsonl", chunk_rows=37, workers=2)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "many.jsonl").read_bytes()
    assert one.kept_count == many.kept_count > 0 and one.rows_in == many.rows_in == len(rows)
    assert many.duplicates == one.duplicates and {d["method"] for d in one.duplicates} >= {"exact", "minhash"}
    assert many.quarantined == one.quarantined and len(one.quarantined) == 24
    assert many.pii_counts == one.pii_counts == Counter({"EMAIL": 30})  # 28 rows with an address, 2 copies
    assert np.array_equal(many.signatures, one.signatures) and len(one.signatures) == one.kept_count
    assert one.rows_in == one.kept_count + len(one.quarantined) + len(one.duplicates)
