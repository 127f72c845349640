"""Format detection and conversion to canonical chat messages, and file-level failures."""

import hashlib
import json
import re

import pytest

from ft_pipeline.data.formats import DropError, RowError, check_drop_key, detect_format, read_drop, to_messages

U, A = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}

# (format, row, expected messages or the RowError code) — one line a case.
CASES = [
    ("openai_chat", {"messages": [U, A]}, [U, A]),  # the plain case
    ("openai_chat", {"messages": [{"role": "system", "content": "s"}, U, A]},
     [{"role": "system", "content": "s"}, U, A]),
    ("openai_chat", {"messages": [U, {**A, "weight": 0}, U, A]}, [U, {**A, "weight": 0}, U, A]),  # weights kept
    ("openai_chat", {"msgs": [U, A]}, "missing_messages"),  # OpenAI check: missing messages list
    ("openai_chat", {"messages": [{"role": "user"}, A]}, "missing_key"),  # message missing key
    ("openai_chat", {"messages": [{**U, "foo": 1}, A]}, "unrecognized_key"),  # unrecognized key
    ("openai_chat", {"messages": [{"role": "human", "content": "hi"}, A]}, "unrecognized_role"),
    ("openai_chat", {"messages": [{"role": "user", "content": None}, A]}, "missing_content"),
    ("openai_chat", {"messages": [U]}, "no_assistant_message"),
    ("openai_chat", {"messages": "hi"}, "wrong_data_type"),  # wrong data type
    ("openai_chat", {"messages": [{"role": "user", "content": 3}, A]}, "wrong_data_type"),
    ("openai_chat", {"messages": [A, U]}, "assistant_not_last"),
    ("openai_chat", {"messages": [U, {"role": "assistant", "content": "  "}]}, "empty_turn"),  # whitespace only
    ("openai_chat", {"messages": [U, {**A, "weight": 2}]}, "bad_weight"),
    ("openai_chat", {"messages": [U, {"role": "assistant", "content": "", "tool_calls": []}]}, "tool_calls"),
    ("openai_chat", [U, A], "wrong_data_type"),  # a list instead of an object
    ("openai_chat", {"messages": [{"role": "user", "content": "hi \ud800"}, A]}, "invalid_unicode"),  # "\\ud800"
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "\udfff"}]},
     "invalid_unicode"),
    ("alpaca", {"instruction": "do", "input": "x", "output": "y"},
     [{"role": "user", "content": "do\n\nx"}, {"role": "assistant", "content": "y"}]),
    ("alpaca", {"instruction": "do", "input": "", "output": "y"},
     [{"role": "user", "content": "do"}, {"role": "assistant", "content": "y"}]),  # empty input is dropped
    ("alpaca", {"instruction": "do", "output": ""}, "empty_turn"),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}, [U, A]),
    ("sharegpt", {"conversations": [{"from": "bot", "value": "hi"}]}, "unrecognized_role"),
    ("prompt_completion", {"prompt": "hi", "completion": "ok"}, [U, A]),
    ("prompt_completion", {"prompt": "hi"}, "missing_field"),
    # No user turn before the final assistant turn: nothing to answer, nothing to evaluate (issue 12, item 3).
    ("openai_chat", {"messages": [A]}, "no_user_turn"),  # an answer alone
    ("openai_chat", {"messages": [{"role": "system", "content": "s"}, A]},
     "no_user_turn"),  # a system prompt asks nothing
    ("openai_chat", {"messages": [A, A]}, "no_user_turn"),  # two answers, still no question
    ("openai_chat", {"messages": [A, U, A]}, [A, U, A]),  # an assistant greeting before the user is fine
    ("sharegpt", {"conversations": [{"from": "gpt", "value": "{}"}]}, "no_user_turn"),  # the row seen in issue 12
    ("sharegpt", {"conversations": [{"from": "system", "value": "s"}, {"from": "gpt", "value": "ok"}]}, "no_user_turn"),
    ("alpaca", {"instruction": " ", "input": "", "output": "y"}, "empty_turn"),  # alpaca's user turn is always there
    ("prompt_completion", {"prompt": "", "completion": "ok"}, "empty_turn"),  # so is prompt/completion's
    ("text", {"text": "ok"}, "no_user_turn"),  # plain text is an answer with no prompt
]


@pytest.mark.parametrize("fmt,row,expected", CASES)
def test_to_messages(fmt, row, expected):
    if isinstance(expected, str):
        with pytest.raises(RowError) as e:
            to_messages(row, fmt)
        assert e.value.code == expected
        assert str(e.value)  # a reason a person reads
        if expected == "no_user_turn" and fmt == "text":
            assert "'prompt'/'completion'" in str(e.value)  # says how to give such rows instead
    else:
        assert to_messages(row, fmt) == expected


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_jsonl_rows_keep_line_numbers_bom_crlf_and_bad_lines(tmp_path):
    good = json.dumps({"messages": [U, A]}).encode()
    p = _write(tmp_path, "d.jsonl",
               b"\xef\xbb\xbf" + good + b"\r\n\r\n" + b'{"messages": [' + b"\n" + b"\xff\xfe" + b"\n" + good)
    parsed = read_drop(p)
    assert [(r.line, r.code) for r in parsed.rows] == [(1, None), (3, "malformed_json"), (4, "invalid_utf8"), (5, None)]
    assert parsed.rows[0].data == {"messages": [U, A]}  # BOM and CR removed
    assert parsed.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()  # hash of the bytes that were parsed
    assert detect_format(parsed.rows) == "openai_chat"


def test_json_array_rows_carry_their_start_line(tmp_path):
    p = _write(tmp_path, "d.json", json.dumps([{"prompt": "a", "completion": "b"}] * 3, indent=2).encode())
    rows = read_drop(p).rows
    assert [r.line for r in rows] == [2, 6, 10]
    assert detect_format(rows) == "prompt_completion"


def test_csv_rows_keep_line_numbers_with_multiline_fields(tmp_path):
    p = _write(tmp_path, "d.csv", b'prompt,completion\n"a\nb",x\nc,y\nd\n')
    rows = read_drop(p).rows
    assert [(r.line, r.code) for r in rows] == [(2, None), (4, None), (5, "malformed_csv_row")]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"instruction": "i", "input": "", "output": "o"}]), tmp_path / "d.parquet")
    rows = read_drop(tmp_path / "d.parquet").rows
    assert detect_format(rows) == "alpaca" and rows[0].line == 1


# A file that cannot be used at all: (file name, bytes, words the error must contain) — one line a case.
BAD_FILES = [
    ("empty.jsonl", b"", "empty"),
    ("blank.jsonl", b"\n  \n", "empty"),
    ("notes.txt", b"hello", "unsupported file extension"),  # wrong extension
    ("all_bad.jsonl", b"not json\nstill not\n", "no line is valid JSON"),
    ("truncated.json", b'[{"prompt": "a", "completion": "b"},\n{"prompt": "c", ',
     "line 2: malformed JSON: the file ends"),
    ("object.json", b'{"data": []}', "expected a JSON array"),  # valid JSON of the wrong shape
    ("latin1.json", b'[{"prompt": "caf\xe9"}]', "invalid UTF-8"),  # non-UTF-8 bytes
    ("bad.parquet", b"PAR1garbage", "not a readable Parquet file"),
    ("dup_header.csv", b"prompt,prompt\na,b\n", "repeated column names"),
]


@pytest.mark.parametrize("name,data,words", BAD_FILES)
def test_unusable_files_fail_with_file_and_problem(tmp_path, name, data, words):
    p = _write(tmp_path, name, data)
    with pytest.raises(DropError) as e:
        read_drop(p)
    assert words in str(e.value) and str(p) in str(e.value)


def test_wrong_shape_rows_cannot_be_detected(tmp_path):
    p = _write(tmp_path, "d.jsonl", b'{"question": "a", "answer": "b"}\n')
    with pytest.raises(DropError, match="cannot detect the example format.*line 1"):
        detect_format(read_drop(p).rows, p)


@pytest.mark.parametrize("key", ["../x.jsonl", "..jsonl", ".hidden.jsonl", "a/b.jsonl", "a b.csv", "/etc/passwd", ""])
def test_drop_keys_that_could_escape_the_data_folder_are_rejected(key):
    with pytest.raises(DropError, match="not a valid drop name"):
        check_drop_key(key)


_H = "[0-9a-f]{8}"
# Any file name is a drop (issue 12, item 4): (file name, its partition key as a regex) — one line a case.
DROP_KEYS = [
    ("2026-03-tickets.csv", r"2026-03-tickets\.csv"),  # a plain name is its own key: existing keys never change
    ("Support export (Nov 2026).csv", rf"Support-export-Nov-2026-{_H}\.csv"),  # the name seen in issue 12
    ("données-clients.jsonl", rf"donnees-clients-{_H}\.jsonl"),  # accents folded to ASCII
    ("客户.csv", rf"drop-{_H}\.csv"),  # nothing ASCII to keep: the hash alone tells it apart
    ("..jsonl", rf"drop-{_H}\.jsonl"),  # '..' is never part of a key
    ("a..b.CSV", rf"a-b-{_H}\.csv"),  # nor inside one; the extension lower-cased as the readers see it
    ("x" * 300 + ".json", rf"x{{64}}-{_H}\.json"),  # a long name: the key stays short
    ("caf\udce9.csv", rf"caf-{_H}\.csv"),  # a name that is not UTF-8 on disk (surrogate-escaped by Python)
]


@pytest.mark.parametrize("name,pattern", DROP_KEYS, ids=[c[0][:30] for c in DROP_KEYS])
def test_every_file_name_gets_a_safe_partition_key(name, pattern):
    from ft_pipeline.data.drop_files import drop_key

    key = drop_key(name)
    assert re.fullmatch(pattern, key), key
    assert check_drop_key(key) == key  # a valid key: no separator, no '..', at most 128 characters


def test_names_that_slug_alike_never_share_a_key_and_nfd_names_keep_theirs():
    import unicodedata

    from ft_pipeline.data.drop_files import drop_key

    names = ["a b.csv", "a  b.csv", "a+b.csv", "a-b .csv", "A b.csv"]  # all slug to a-b or A-b
    assert len({drop_key(n) for n in names}) == len(names)
    nfc = "données.csv"
    assert drop_key(unicodedata.normalize("NFD", nfc)) == drop_key(nfc)  # macOS stores names decomposed


def test_find_drops_keys_real_names_and_reports_a_key_clash(tmp_path):
    from ft_pipeline.data.drop_files import drop_key, find_drops, raw_path

    clash = drop_key("données.csv")  # a file literally named as another's derived key
    for name in ("a.jsonl", "Support export (Nov 2026).csv", "données.csv", clash, ".hidden.json", "notes.txt"):
        (tmp_path / name).write_text("{}")
    drops, problems = find_drops(tmp_path)
    assert {k: p.name for k, p in drops.items()} == {
        "a.jsonl": "a.jsonl", drop_key("Support export (Nov 2026).csv"): "Support export (Nov 2026).csv",
        clash: clash}  # the file named as the key wins; hidden files and other extensions are not drops
    assert len(problems) == 1 and "données.csv" in problems[0] and "rename one" in problems[0]
    key = drop_key("Support export (Nov 2026).csv")
    assert raw_path(tmp_path, key).name == "Support export (Nov 2026).csv"  # a key leads back to its file
    assert raw_path(tmp_path, "gone.csv") == tmp_path / "gone.csv"  # a removed drop: its absent path
    with pytest.raises(DropError, match="not a valid drop name"):
        raw_path(tmp_path, "../a.jsonl")  # a key typed in the UI still cannot leave the raw folder


def test_a_real_export_name_is_read_under_its_key_and_keeps_its_name(tmp_path):
    from ft_pipeline.data.cleaning import iter_canonical
    from ft_pipeline.data.drop_files import drop_key

    p = _write(tmp_path, "Support export (Nov 2026).csv", b"prompt,completion\nhi,ok\n")
    parsed = read_drop(p)
    assert parsed.drop == drop_key(p.name) and parsed.path.name == p.name
    assert [r["drop"] for r in iter_canonical(parsed, "prompt_completion")] == [parsed.drop]


def test_lineage_rows_name_the_original_file(monkeypatch):
    from ft_pipeline.registry import versions as registry

    logged = {}
    monkeypatch.setattr(registry.mlflow, "log_text", lambda text, path: logged.update({path: text}))
    rec = {"drop": "Support-export-Nov-2026-0a1b2c3d.csv", "line": 2, "raw_sha256": "ab", "id": "x"}
    registry.log_lineage([rec, {**rec, "drop": "a.jsonl"}],
                         {"Support-export-Nov-2026-0a1b2c3d.csv": "Support export (Nov 2026).csv"})
    rows = [json.loads(line) for line in logged[registry.LINEAGE_ARTIFACT].splitlines()]
    assert [r["file"] for r in rows] == ["Support export (Nov 2026).csv", "a.jsonl"]


def test_a_lone_surrogate_escape_is_a_quarantined_row_not_a_failed_drop(tmp_path):
    """`\\ud800` is valid JSON but no character: the row is quarantined with its line and reason, its neighbours
    are converted, and the canonical records still write as UTF-8."""
    from ft_pipeline.data.cleaning import iter_canonical
    from ft_pipeline.jsonl import read_jsonl, write_jsonl

    good = json.dumps({"messages": [U, A]}).encode()
    bad = b'{"messages": [{"role": "user", "content": "hi \\ud800 there"}, {"role": "assistant", "content": "ok"}]}'
    parsed = read_drop(_write(tmp_path, "d.jsonl", b"\n".join([good, bad, good]) + b"\n"))
    write_jsonl(tmp_path / "out.jsonl", iter_canonical(parsed, "openai_chat"))
    records = read_jsonl(tmp_path / "out.jsonl")
    assert [(r["line"], r.get("code")) for r in records] == [(1, None), (2, "invalid_unicode"), (3, None)]
    assert "\\ud800 at character 3" in records[1]["reason"] and records[1]["raw"] == bad.decode()


# One bad byte costs its row, not the drop (issue 12, item 2): (file name, bytes, (line, code) of every row).
_GOOD_CSV = [f'"hello {i} – thanks","fine {i}"\n'.encode() for i in range(20)]  # an en dash: valid UTF-8
ONE_BAD_BYTE = [
    ("issue.csv", b"".join([b"prompt,completion\n", *_GOOD_CSV[:7], b'"caf\xe9 au lait","ok"\n', *_GOOD_CSV[7:]]),
     [(n, "invalid_utf8" if n == 9 else None) for n in range(2, 23)]),  # the case seen: 20 good rows and one bad
    ("multiline.csv", b'prompt,completion\n"a\nb\xff",x\nc,y\n',
     [(2, "invalid_utf8"), (4, None)]),  # keeps its first line
    ("extra.csv", b'prompt,completion\na,b\nc,d,\xe9\n',
     [(2, None), (3, "invalid_utf8")]),  # in a field past the header
    ("one.json", b'[{"prompt": "a", "completion": "b"},\n{"prompt": "\xe9", "completion": "b"},\n'
                 b'{"prompt": "c", "completion": "d"}]',
     [(1, None), (2, "invalid_utf8"), (3, None)]),  # a JSON array too
    ("one.jsonl", b'{"text": "a"}\n{"text": "\xe9"}\n{"text": "b"}\n', [(1, None), (2, "invalid_utf8"), (3, None)]),
]


@pytest.mark.parametrize("name,data,expected", ONE_BAD_BYTE, ids=[c[0] for c in ONE_BAD_BYTE])
def test_a_row_with_invalid_utf8_is_quarantined_and_its_neighbours_kept(tmp_path, name, data, expected):
    rows = read_drop(_write(tmp_path, name, data)).rows
    assert [(r.line, r.code) for r in rows] == expected
    bad = next(r for r in rows if r.code)
    assert "\\x" in bad.text and not re.search("[\\ud800-\\udfff]", bad.text)  # bytes shown as \xNN
    assert "invalid UTF-8" in bad.error and "byte" in bad.error and "encoding" in bad.error
    assert all(r.data for r in rows if not r.code)


def test_the_quarantined_csv_row_keeps_its_line_bytes_and_reason():
    import tempfile
    from pathlib import Path

    from ft_pipeline.data.cleaning import canonicalize, clean_records

    with tempfile.TemporaryDirectory() as tmp:
        parsed = read_drop(_write(Path(tmp), "d.csv", ONE_BAD_BYTE[0][1]))
    out = clean_records(canonicalize(parsed, "prompt_completion"), None)
    assert [(q["line"], q["code"]) for q in out.quarantined] == [(9, "invalid_utf8")]
    assert "caf\\xe9 au lait" in out.quarantined[0]["raw"] and "column 'prompt'" in out.quarantined[0]["reason"]
    assert out.kept_count + len(out.duplicates) == 20


_FR = "".join(f'"Bonjour, ma commande {i} est arrivée abîmée","Désolé {i}"\n' for i in range(20))
_RU = "".join(f'{{"prompt": "Здравствуйте, заказ {i} не пришёл", "completion": "ok"}}\n'
              for i in range(20))
# A file that is mostly not UTF-8 still fails as a whole, naming the likely encoding; declared, it parses.
# (file name, bytes, the encoding the error names and that then parses the file) — one line a case.
OTHER_ENCODINGS = [
    ("latin1.csv", ("prompt,completion\n" + _FR).encode("latin-1"), "cp1252"),  # a French Excel export
    ("cyrillic.jsonl", _RU.encode("cp1251"), "cp1251"),  # not Western: charset_normalizer's guess stands
    ("utf16.csv", ("prompt,completion\n" + _FR).encode("utf-16"), "utf_16"),  # Excel's "Unicode text"
    ("half.jsonl", "".join('{"text": "café"}\n{"text": "ok"}\n' for _ in range(5)).encode("latin-1"), "cp1252"),
]


@pytest.mark.parametrize("name,data,encoding", OTHER_ENCODINGS, ids=[c[0] for c in OTHER_ENCODINGS])
def test_a_file_in_another_encoding_fails_naming_it_and_parses_once_declared(tmp_path, name, data, encoding):
    p = _write(tmp_path, name, data)
    with pytest.raises(DropError) as e:
        read_drop(p)
    assert str(p) in str(e.value) and f"likely {encoding}" in str(e.value) and f"encoding: {encoding}" in str(e.value)
    rows = read_drop(p, encoding).rows
    assert rows and not any(r.error for r in rows) and rows[0].line == (1 if name.endswith("jsonl") else 2)
    assert not rows[0].text.isascii()  # the accents or Cyrillic decoded, not replaced


def test_an_unknown_or_wrong_declared_encoding_is_a_clear_drop_error(tmp_path):
    p = _write(tmp_path, "d.csv", b"prompt,completion\n\xff\xfeab,c\n")
    with pytest.raises(DropError, match="unknown encoding 'latin-9000'"):
        read_drop(p, "latin-9000")
    with pytest.raises(DropError, match=r"line 2: byte 18 \(0xff\) is not valid ascii"):  # declared, but wrong
        read_drop(p, "ascii")
