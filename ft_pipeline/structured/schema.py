"""The JSON Schema of a model's answers, inferred from the answers it is trained on, in OpenAI's strict subset.

`infer_schema(objects)` reads parsed JSON objects (the assistant answers of a train set) and returns the schema
they all match: keys in the order first seen, every key in `required` (a key some answers lack, or null in some,
is nullable: `["T", "null"]`, or `anyOf` with `{"type": "null"}` for objects, arrays and mixed types), the JSON
type of each value (integer and number seen together: number; other mixtures: `anyOf`), nested objects and array
items recursively, `additionalProperties: false` everywhere, and an `enum` for a string field with few distinct
values. None when an answer is not an object or the schema would fall outside the strict subset.

Enums: a string field is an enum when it takes at most ENUM_MAX_VALUES distinct values and was seen, as a
string, at least ENUM_MIN_PER_VALUE times per distinct value (and at least ENUM_MIN_SEEN times). With few
examples every field looks closed (five answers, five product names); the support rule keeps a free-text or
id field a plain string unless the data show its values repeat, and 12 is room for a label set (intents,
urgencies, categories) while staying far below a name-like field of a real catalogue. A preset that knows
better gives its own schema (the split's `output_schema` knob)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from ft_pipeline.structured.formats import strict_problem

ENUM_MAX_VALUES = 12
ENUM_MIN_PER_VALUE = 5
ENUM_MIN_SEEN = 20

_ORDER = ("string", "integer", "number", "boolean", "object", "array")


# JSON Schema's name of each Python type json.loads makes; bool before int, since True is an int too
_KINDS = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (dict, "object"), (list, "array"))


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    for python_type, name in _KINDS:
        if isinstance(v, python_type):
            return name
    raise TypeError(f"not a JSON value: {type(v).__name__}")


class _Node:
    """What the values seen at one place of the documents were: their types, the strings (while few), the
    object keys (each with its own node) and array items (one node for all)."""

    def __init__(self):
        self.kinds: Counter = Counter()
        self.strings: Counter | None = Counter()  # None once more than ENUM_MAX_VALUES distinct
        self.objects = 0
        self.keys: dict[str, _Node] = {}  # insertion order = first seen
        self.key_seen: Counter = Counter()
        self.items: _Node | None = None

    def add(self, v: Any) -> None:
        k = _kind(v)
        self.kinds[k] += 1
        if k == "string" and self.strings is not None:
            self.strings[v] += 1
            if len(self.strings) > ENUM_MAX_VALUES:
                self.strings = None
        elif k == "object":
            self.objects += 1
            for key, sub in v.items():
                self.keys.setdefault(key, _Node()).add(sub)
                self.key_seen[key] += 1
        elif k == "array":
            if self.items is None:
                self.items = _Node()
            for sub in v:
                self.items.add(sub)

    def schema(self, nullable: bool = False) -> dict:
        kinds = set(self.kinds)
        if "integer" in kinds and "number" in kinds:
            kinds.discard("integer")
        nullable = nullable or "null" in kinds
        kinds.discard("null")
        branches = [self._branch(k) for k in _ORDER if k in kinds]
        if not branches:
            return {"type": "null"}
        if len(branches) == 1 and branches[0]["type"] not in ("object", "array"):
            s = branches[0]
            if nullable:
                s = {**s, "type": [s["type"], "null"]}
                if "enum" in s:
                    s["enum"] = [*s["enum"], None]
            return s
        if nullable:
            branches.append({"type": "null"})
        return branches[0] if len(branches) == 1 else {"anyOf": branches}

    def _branch(self, kind: str) -> dict:
        if kind == "string":
            seen = self.kinds["string"]
            if self.strings is not None and seen >= max(ENUM_MIN_SEEN, ENUM_MIN_PER_VALUE * len(self.strings)):
                return {"type": "string", "enum": list(self.strings)}  # in first-seen order
            return {"type": "string"}
        if kind == "object":
            props = {k: node.schema(nullable=self.key_seen[k] < self.objects) for k, node in self.keys.items()}
            return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
        if kind == "array":
            if self.items is None or not self.items.kinds:
                return {"type": "array", "items": {"type": "null"}, "maxItems": 0}  # only ever empty
            return {"type": "array", "items": self.items.schema()}
        return {"type": kind}


def infer_schema(objects: Iterable[Any]) -> dict | None:
    """The strict JSON Schema that every one of `objects` matches, or None when one is not a JSON object (or
    there are none, or the schema would fall outside the strict subset, e.g. nested too deep)."""
    root, n = _Node(), 0
    for obj in objects:
        if not isinstance(obj, dict):
            return None
        root.add(obj)
        n += 1
    if not n:
        return None
    schema = root.schema()
    return schema if strict_problem(schema) is None else None


# The separators between items and between a key and its value: Python's json.dumps default, and compact JSON.
JSON_STYLES = {"spaced": (", ", ": "), "compact": (",", ":")}


def json_style(text: str, obj: Any) -> str | None:
    """Which of JSON_STYLES `text` (which parses to `obj`) is written in exactly, or None (indented, or mixed)."""
    text = text.strip()
    for style, seps in JSON_STYLES.items():
        for ascii_only in (False, True):
            if json.dumps(obj, separators=seps, ensure_ascii=ascii_only) == text:
                return style
    return None


class SchemaCollector:
    """infer_schema fed one answer text at a time (a JSON object written as text), stopping at the first answer
    that is not one: `schema()` is then None and `why` says which. The schema also says how the answers were
    written, as llguidance's `x-guidance` separators (the style most answers use exactly): a model tuned on
    `{"a": 1, "b": 2}` is held to that, not to compact JSON it never saw."""

    def __init__(self):
        self._root = _Node()
        self.n = 0
        self.why: str | None = None
        self.styles: dict[str, int] = dict.fromkeys(JSON_STYLES, 0)  # answers written exactly in each style

    def add_text(self, text: str, where: str = "") -> bool:
        if self.why is not None:
            return False
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            obj = None
        if not isinstance(obj, dict):
            self.why = f"an answer is not a JSON object{f' ({where})' if where else ''}"
            return False
        self._root.add(obj)
        self.n += 1
        if (style := json_style(text, obj)) is not None:
            self.styles[style] += 1
        return True

    def add_messages(self, messages: list[dict], where: str = "") -> bool:
        """Every assistant message of a conversation is an answer."""
        return all(self.add_text(m.get("content"), where) for m in messages if m.get("role") == "assistant")

    def schema(self) -> dict | None:
        if self.why is not None:
            return None
        if not self.n:
            self.why = "no answers"
            return None
        s = self._root.schema()
        if (problem := strict_problem(s)) is not None:
            self.why = f"the inferred schema is outside the strict subset: {problem}"
            return None
        if any(self.styles.values()):  # how the answers were written, for the grammar to write them the same way
            item, key = JSON_STYLES[max(self.styles, key=self.styles.get)]
            s["x-guidance"] = {"item_separator": item, "key_separator": key}
        return s


class SchemaFileError(ValueError):
    """A schema file that cannot be used: its message names the file and the problem."""


def load_schema_file(path: str | Path, root: Path | None = None) -> dict:
    """The JSON Schema in `path` (relative to `root`, the checkout, when not absolute), checked against the
    strict subset; SchemaFileError naming the file and the problem."""
    p = Path(path)
    if not p.is_absolute() and root is not None:
        p = root / p
    try:
        schema = json.loads(p.read_text())
    except FileNotFoundError:
        raise SchemaFileError(f"output_schema {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SchemaFileError(f"output_schema {p}: cannot read it: {e}") from None
    except json.JSONDecodeError as e:
        raise SchemaFileError(f"output_schema {p}: not valid JSON: {e}") from None
    if not isinstance(schema, dict):
        raise SchemaFileError(f"output_schema {p}: must be a JSON Schema object, not {type(schema).__name__}")
    if (problem := strict_problem(schema)) is not None:
        raise SchemaFileError(f"output_schema {p}: outside OpenAI's strict subset: {problem}")
    return schema


def dumps(schema: dict) -> str:
    """The schema as written to output_schema.json (its sha256 is the one recorded)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
