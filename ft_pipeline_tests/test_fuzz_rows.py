"""Property-based fuzzing of the data layer: whatever a row or a file holds, the result is a clear error or a
quarantined row, never a crash and never a lost row."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ft_pipeline.data.cleaning import canonicalize, clean_records, clean_stream, iter_canonical
from ft_pipeline.data.formats import FORMATS, DropError, detect_format, read_drop
from ft_pipeline.jsonl import read_jsonl, write_jsonl

# Any text, or text around a lone surrogate: json.dumps writes it as a "\\ud800" escape, which is valid JSON.
text = st.text(max_size=40) | st.builds(lambda a, c, b: a + c + b, st.text(max_size=20),
                                        st.characters(categories=["Cs"]), st.text(max_size=20))
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(["messages", "role", "content", "weight", "instruction", "input", "output", "prompt",
                     "completion", "text", "conversations", "from", "value", "tool_calls", "x"]), inner, max_size=5),
    max_leaves=20)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", "tool", 3]),
                                 "content": text | st.none() | st.integers()})
chat_rows = st.fixed_dictionaries({"messages": st.lists(message, max_size=4)})
# Well-formed conversations with any text: they reach normalization, redaction, hashing and writing.
valid_chat_rows = st.builds(lambda q, a: {"messages": [{"role": "user", "content": q},
                                                       {"role": "assistant", "content": a}]}, text, text)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(rows=st.lists(json_values | chat_rows | valid_chat_rows, min_size=1, max_size=8), fmt=st.sampled_from(FORMATS))
def test_any_rows_are_kept_quarantined_or_duplicates(tmp_path, rows, fmt):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        parsed = read_drop(p)
    except DropError as e:
        assert str(p) in str(e)
        return
    # As the assets do it: canonical records written as JSONL (raw_examples), its lines cleaned (cleaned_examples).
    write_jsonl(tmp_path / "raw.jsonl", iter_canonical(parsed, fmt))
    with open(tmp_path / "raw.jsonl", "rb") as lines:
        out = clean_stream(lines, tmp_path / "cleaned.jsonl", workers=0)
    kept = read_jsonl(tmp_path / "cleaned.jsonl")
    assert out.rows_in == len(parsed.rows) == len(kept) + len(out.quarantined) + len(out.duplicates)
    assert all(q["reason"] and q["line"] >= 1 for q in out.quarantined)


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_any_bytes_give_a_clear_error_or_accounted_rows(tmp_path, data, suffix):
    p = tmp_path / f"d{suffix}"
    p.write_bytes(data)
    try:
        parsed = read_drop(p)
        fmt = detect_format(parsed.rows, p)
    except DropError as e:
        assert str(p) in str(e)
        return
    out = clean_records(canonicalize(parsed, fmt))
    assert out.rows_in == len(out.kept) + len(out.quarantined) + len(out.duplicates)
