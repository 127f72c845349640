"""Read a data drop (JSONL, JSON array, CSV, Parquet), detect its example format and convert every row to the
canonical chat record. A row that cannot be converted keeps its original text and a reason; a file that cannot
be read at all raises `DropError` naming the file and the problem. Text files are UTF-8 unless an encoding is
declared (see data/encodings.py)."""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ft_pipeline.data import encodings
from ft_pipeline.data.bulk import no_cycle_gc
from ft_pipeline.data.drop_files import SUPPORTED_SUFFIXES, check_drop_key, drop_key, find_drops  # noqa: F401
from ft_pipeline.data.errors import DropError, RowError

FORMATS = ("openai_chat", "sharegpt", "alpaca", "prompt_completion", "text")

_CHAT_ROLES = ("system", "user", "assistant")
_MESSAGE_KEYS = {"role", "content", "name", "weight"}
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(slots=True)  # one per input row: slots keep a million of them small
class RawRow:
    line: int  # 1-based line in the file (JSONL, CSV, JSON array) or row number (Parquet)
    text: str  # the original text of the row
    data: Any = None  # the parsed value, None when it did not parse
    error: str | None = None  # why it did not parse
    code: str | None = None  # the class of that error


@dataclass
class ParsedDrop:
    drop: str
    path: Path
    file_format: str  # jsonl | json | csv | parquet
    sha256: str  # of the exact bytes that were parsed
    rows: list[RawRow] = field(default_factory=list)


def drop_name(path: Path) -> str:
    """The partition key of a drop file (see data/drop_files.py)."""
    return drop_key(path.name)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@no_cycle_gc()
def read_drop(path: Path, encoding: str = "utf-8") -> ParsedDrop:
    """The rows of a drop file. `encoding` is that of a text file (JSONL, JSON, CSV; Parquet's text is UTF-8)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DropError(f"{path}: unsupported file extension {suffix!r}; "
                        f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DropError(f"{path}: cannot read the file: {e.strerror or e}") from e
    if not raw.strip():
        raise DropError(f"{path}: the file is empty")
    reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[suffix]
    encoding = encodings.check_encoding(path, encoding)
    # A declared encoding other than UTF-8: the readers see the text as UTF-8; the hash stays that of the file.
    rows = reader(path, raw if suffix == ".parquet" or encodings.is_utf8(encoding)
                  else encodings.transcode(path, raw, encoding))
    if not rows:
        raise DropError(f"{path}: the file holds no rows")
    return ParsedDrop(drop=drop_name(path), path=path, file_format=suffix[1:], sha256=hashlib.sha256(raw).hexdigest(),
                      rows=rows)


def _read_jsonl(path: Path, raw: bytes) -> list[RawRow]:
    rows = []
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for i, bline in enumerate(raw.split(b"\n"), start=1):
        bline = bline.rstrip(b"\r")
        if not bline.strip():
            continue
        try:
            text = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(RawRow(i, bline.decode("utf-8", errors="backslashreplace"),
                               error=f"invalid UTF-8 at byte {e.start} (0x{bline[e.start]:02x}) of the line "
                                     f"(shown as \\x{bline[e.start]:02x}); {encodings.HINT}", code="invalid_utf8"))
            continue
        try:
            rows.append(RawRow(i, text, data=json.loads(text)))
        except json.JSONDecodeError as e:
            rows.append(RawRow(i, text, error=f"malformed JSON at column {e.colno}: {e.msg}",
                               code="malformed_json"))
    _check_utf8(path, raw, rows)
    if rows and all(r.error for r in rows):
        raise DropError(f"{path}: no line is valid JSON (line {rows[0].line}: {rows[0].error}); "
                        "is this really a JSONL file?")
    return rows


def _check_utf8(path: Path, raw: bytes, rows: list[RawRow]) -> None:
    """Rows holding bytes that are not UTF-8 are quarantined one by one, unless there are so many that the file
    is in another encoding: then the drop fails naming the likely one."""
    bad = [r for r in rows if r.code == "invalid_utf8"]
    if bad and (len(bad) == len(rows) or encodings.mostly_not_utf8(
            len(rows), len(bad), sum(not r.error and not r.text.isascii() for r in rows))):
        raise encodings.not_utf8_error(path, raw, f"{len(bad)} of {len(rows)} rows hold invalid UTF-8 "
                                                  f"(the first at line {bad[0].line})")


def _bad_utf8_row(line: int, text: str, where: str) -> RawRow:
    return RawRow(line, encodings.shown(text), error=f"invalid UTF-8 {where} (shown as \\xNN); {encodings.HINT}",
                  code="invalid_utf8")


def _read_json(path: Path, raw: bytes) -> list[RawRow]:
    text = encodings.decode_utf8(raw)
    newlines = [m.start() for m in re.finditer("\n", text)]
    line_of = lambda pos: bisect.bisect_left(newlines, pos) + 1  # noqa: E731
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DropError(f"{path}: line {e.lineno}: malformed JSON: {e.msg}") from e
        raise DropError(f"{path}: expected a JSON array of examples, found a JSON {type(value).__name__}"
                        + (f" with keys {sorted(value)[:5]}" if isinstance(value, dict) else ""))
    rows, pos = [], _skip_ws(text, pos + 1)
    # Decode element by element so each row keeps the line it starts on.
    while pos < len(text) and text[pos] != "]":
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if e.pos >= len(text.rstrip()):
                raise DropError(f"{path}: line {e.lineno}: malformed JSON: the file ends before the array is "
                                "closed (truncated file?)") from e
            raise DropError(f"{path}: line {e.lineno}: malformed JSON: {e.msg}") from e
        if bad := encodings.first_bad_byte(element := text[pos:end]):
            rows.append(_bad_utf8_row(line_of(pos), element, f"at {bad} of the element"))
        else:
            rows.append(RawRow(line_of(pos), element, data=value))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise DropError(f"{path}: line {line_of(pos)}: malformed JSON: expected ',' or ']'")
    if pos >= len(text):
        raise DropError(f"{path}: line {line_of(len(text) - 1)}: malformed JSON: the file ends before the array is "
                        "closed (truncated file?)")
    _check_utf8(path, raw, rows)
    return rows


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_csv(path: Path, raw: bytes) -> list[RawRow]:
    text = encodings.decode_utf8(raw)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as e:
        raise DropError(f"{path}: line 1: cannot read the CSV header: {e}") from e
    header = [h.strip() for h in header]
    if any(encodings.first_bad_byte(h) for h in header):
        raise encodings.not_utf8_error(path, raw, "line 1: the CSV header holds invalid UTF-8")
    if len(set(header)) != len(header) or not all(header):
        raise DropError(f"{path}: line 1: the CSV header has empty or repeated column names: {header}")
    rows, start = [], reader.line_num + 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DropError(f"{path}: line {reader.line_num}: malformed CSV: {e}") from e
        if values and any(v.strip() for v in values):
            original = json.dumps(values, ensure_ascii=False)
            if bad := next(((i, b) for i, v in enumerate(values) if (b := encodings.first_bad_byte(v))), None):
                where = f"column {header[bad[0]]!r}" if bad[0] < len(header) else f"field {bad[0] + 1}"
                rows.append(_bad_utf8_row(start, original, f"in {where} at {bad[1]} of its value"))
            elif len(values) != len(header):
                rows.append(RawRow(start, original, error=f"expected {len(header)} CSV fields, found {len(values)}",
                                    code="malformed_csv_row"))
            else:
                rows.append(RawRow(start, original, data=dict(zip(header, values))))
        start = reader.line_num + 1
    _check_utf8(path, raw, rows)
    return rows


def _read_parquet(path: Path, raw: bytes) -> list[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(raw))
    except Exception as e:  # pyarrow raises several unrelated types for a bad file; all mean "not Parquet"
        raise DropError(f"{path}: not a readable Parquet file: {e}") from e
    return [RawRow(i, json.dumps(rec, ensure_ascii=False, default=str), data=rec)
            for i, rec in enumerate(table.to_pylist(), start=1)]


def detect_format(rows: list[RawRow], path: Path | None = None) -> str:
    """The example format most rows of the drop have, judged from their keys."""
    votes = Counter(f for r in rows[:500] if (f := _row_format(r.data)))
    if not votes:
        sample = next((r for r in rows if r.data is not None), None)
        what = (f"keys {sorted(sample.data)[:6]}" if sample and isinstance(sample.data, dict)
                else f"a JSON {type(sample.data).__name__}" if sample else "no parseable row")
        raise DropError(f"{path}: cannot detect the example format: line {sample.line if sample else '?'} has {what}; "
                        "expected 'messages', 'conversations', 'instruction'/'output', 'prompt'/'completion' or 'text'")
    return votes.most_common(1)[0][0]


def _row_format(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if "messages" in data:
        return "openai_chat"
    if "conversations" in data:
        return "sharegpt"
    if "instruction" in data and "output" in data:
        return "alpaca"
    if "prompt" in data and "completion" in data:
        return "prompt_completion"
    if "text" in data:
        return "text"
    return None


def to_messages(data: Any, fmt: str) -> list[dict]:
    """Convert one parsed row to OpenAI chat messages, or raise RowError with a reason a person understands."""
    if not isinstance(data, dict):
        raise RowError("wrong_data_type",
                       f"wrong data type: the row is a JSON {type(data).__name__}, expected an object")
    if fmt == "openai_chat":
        messages = _openai_messages(data)
    elif fmt == "sharegpt":
        messages = _sharegpt_messages(data)
    elif fmt == "alpaca":
        instruction = _str_field(data, "instruction")
        inp = data.get("input") or ""
        if not isinstance(inp, str):
            raise RowError("wrong_data_type", "wrong data type: 'input' must be a string")
        user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
        messages = ([{"role": "system", "content": _str_field(data, "system")}] if data.get("system") else [])
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": _str_field(data, "output")}]
    elif fmt == "prompt_completion":
        messages = [{"role": "user", "content": _str_field(data, "prompt")},
                    {"role": "assistant", "content": _str_field(data, "completion")}]
    elif fmt == "text":
        messages = [{"role": "assistant", "content": _str_field(data, "text")}]
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    _check_conversation(messages, _TEXT_HINT if fmt == "text" else "")
    return messages


# A text row is an assistant turn with nothing before it: the no_user_turn rule quarantines every one of them.
_TEXT_HINT = "; a plain 'text' row has no prompt: give it as 'prompt'/'completion' or as chat 'messages'"


def _str_field(data: dict, key: str) -> str:
    if key not in data or data[key] is None:
        raise RowError("missing_field", f"missing '{key}'")
    if not isinstance(data[key], str):
        raise RowError("wrong_data_type",
                       f"wrong data type: '{key}' is a {type(data[key]).__name__}, expected a string")
    return data[key]


def _openai_messages(data: dict) -> list[dict]:
    if "messages" not in data:
        raise RowError("missing_messages", "missing messages list")
    msgs = data["messages"]
    if not isinstance(msgs, list):
        raise RowError("wrong_data_type", f"wrong data type: 'messages' is a {type(msgs).__name__}, expected a list")
    out = []
    for i, m in enumerate(msgs, start=1):
        if not isinstance(m, dict):
            raise RowError("wrong_data_type",
                           f"wrong data type: message {i} is a {type(m).__name__}, expected an object")
        if "tool_calls" in m or "function_call" in m or m.get("role") in ("tool", "function"):
            raise RowError("tool_calls",
                           f"message {i}: tool and function calls are not supported; remove them or the row")
        if "role" not in m:
            raise RowError("missing_key", f"message {i} is missing key 'role'")
        if "content" not in m:
            raise RowError("missing_key", f"message {i} is missing key 'content'")
        extra = set(m) - _MESSAGE_KEYS
        if extra:
            raise RowError("unrecognized_key", f"message {i} has unrecognized key {sorted(extra)[0]!r}")
        if m["role"] not in _CHAT_ROLES:
            raise RowError("unrecognized_role",
                           f"message {i} has unrecognized role {m['role']!r}; expected system, user or assistant")
        if m["content"] is None:
            raise RowError("missing_content", f"message {i} ({m['role']}) is missing content")
        if not isinstance(m["content"], str):
            raise RowError("wrong_data_type", f"wrong data type: message {i} content is a "
                                              f"{type(m['content']).__name__}, expected a string")
        msg = {"role": m["role"], "content": m["content"]}
        if "weight" in m:
            if m["weight"] not in (0, 1) or isinstance(m["weight"], bool) or m["role"] != "assistant":
                raise RowError("bad_weight", f"message {i}: 'weight' must be 0 or 1 and only on assistant messages")
            msg["weight"] = int(m["weight"])
        out.append(msg)
    return out


def _sharegpt_messages(data: dict) -> list[dict]:
    conv = data.get("conversations")
    if not isinstance(conv, list):
        raise RowError("wrong_data_type", "wrong data type: 'conversations' must be a list")
    out = []
    for i, turn in enumerate(conv, start=1):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RowError("wrong_data_type", f"turn {i} must be an object with 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise RowError("unrecognized_role",
                           f"turn {i} has unrecognized role {turn['from']!r}; expected system, human or gpt")
        if not isinstance(turn["value"], str):
            raise RowError("wrong_data_type",
                           f"wrong data type: turn {i} value is a {type(turn['value']).__name__}, expected a string")
        out.append({"role": role, "content": turn["value"]})
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_conversation(messages: list[dict], no_user_hint: str = "") -> None:
    if not messages:
        raise RowError("no_messages", "the conversation has no messages")
    for i, m in enumerate(messages, start=1):
        if not m["content"].strip():
            raise RowError("empty_turn", f"message {i} ({m['role']}) is empty or whitespace only")
        # JSON can spell a lone UTF-16 surrogate ("\\ud800"); it is no character, and no UTF-8 file can hold it.
        if not m["content"].isascii() and (bad := _SURROGATE.search(m["content"])):
            raise RowError("invalid_unicode", f"message {i} ({m['role']}) holds an unpaired surrogate "
                           f"\\u{ord(bad.group()):04x} at character {bad.start()}: not valid Unicode text")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no_assistant_message", "no assistant message")
    if messages[-1]["role"] != "assistant":
        raise RowError("assistant_not_last",
                       f"the last message is from {messages[-1]['role']}; the assistant message must be last")
    roles = [m["role"] for m in messages]
    # Training on it teaches answers to nothing, and evaluation has no prompt to ask (prompt_messages is empty).
    if "user" not in roles[:-1]:
        raise RowError("no_user_turn", "no user message before the final assistant message: the answer answers "
                       "nothing and cannot be evaluated" + no_user_hint)
    if "system" in roles[1:]:
        raise RowError("system_not_first", "a system message may only come first")
