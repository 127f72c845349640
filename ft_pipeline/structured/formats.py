"""OpenAI's `response_format`, read and checked without any grammar engine: `{"type": "text"}`,
`{"type": "json_object"}` (any JSON object) and `{"type": "json_schema", "json_schema": {"name", "description",
"schema", "strict"}}`. With `strict: true` the schema must be in OpenAI's strict subset; `strict_problem` names
the first thing outside it. Every mistake is a FormatError whose message says what is wrong and where."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

# OpenAI's documented limits on a strict schema
MAX_DEPTH = 10
MAX_PROPERTIES = 5000
MAX_ENUM_VALUES = 1000
MAX_NAME_CHARS = 120_000  # property and definition names, enum and const values, all together
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# keywords outside the strict subset (OpenAI: "not supported" / composition other than anyOf)
_REFUSED = ("allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "patternProperties",
            "unevaluatedProperties", "unevaluatedItems", "propertyNames")
# where subschemas live
_MAPS = ("properties", "$defs", "definitions")
_LISTS = ("anyOf", "prefixItems")
_ONE = ("items", "additionalProperties", "contains")


class FormatError(ValueError):
    """The response_format is the client's mistake (HTTP 400, param "response_format")."""


@dataclass(frozen=True)
class ResponseFormat:
    type: str  # "text", "json_object" or "json_schema"
    schema: dict | None = None  # what the answer must match (json_object: {"type": "object"}); None for text
    name: str | None = None
    strict: bool = False
    key: str = field(default="", compare=False)  # the compiled grammar's cache key

    @property
    def constrained(self) -> bool:
        return self.schema is not None


TEXT = ResponseFormat("text")


def schema_key(schema: dict, strict: bool) -> str:
    """A hash of the schema as written (key order matters: the answer's keys come out in schema order)."""
    text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{int(strict)}:{text}".encode()).hexdigest()


def parse_response_format(raw: Any) -> ResponseFormat:
    """The ResponseFormat a request's `response_format` asks for; FormatError naming the problem."""
    if raw is None:
        return TEXT
    if not isinstance(raw, dict):
        raise FormatError(f"must be an object such as {{'type': 'json_schema', ...}}, not {type(raw).__name__}")
    kind = raw.get("type")
    if kind == "text":
        return TEXT
    if kind == "json_object":
        schema = {"type": "object"}
        return ResponseFormat("json_object", schema, key=schema_key(schema, False))
    if kind != "json_schema":
        raise FormatError(f"type must be 'text', 'json_object' or 'json_schema', not {json.dumps(kind)}")
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        raise FormatError("type 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}, 'strict': ...}")
    name, schema, strict = spec.get("name"), spec.get("schema"), spec.get("strict", False)
    if not isinstance(name, str) or not _NAME.match(name):
        raise FormatError("json_schema.name must be 1 to 64 characters of a-z, A-Z, 0-9, '_' and '-', "
                          f"not {json.dumps(name)[:70]}")
    if strict is None:
        strict = False
    if not isinstance(strict, bool):
        raise FormatError(f"json_schema.strict must be true or false, not {json.dumps(strict)[:40]}")
    if not isinstance(schema, dict):
        raise FormatError("json_schema.schema must be a JSON Schema object"
                          + ("" if schema is None else f", not {type(schema).__name__}"))
    if strict and (why := strict_problem(schema)) is not None:
        raise FormatError(f"Invalid schema for response_format '{name}': {why}")
    return ResponseFormat("json_schema", schema, name, strict, key=schema_key(schema, strict))


def _is_object(s: dict) -> bool:
    t = s.get("type")
    return t == "object" or (isinstance(t, list) and "object" in t) or "properties" in s


def strict_problem(schema: dict) -> str | None:
    """The first way `schema` is outside OpenAI's strict subset, said with its JSON path; None when inside."""
    if schema.get("type") != "object" or "anyOf" in schema:
        return f"the root must be an object ('type': 'object', not anyOf), got 'type': {json.dumps(schema.get('type'))}"
    counts = {"properties": 0, "enum": 0, "chars": 0}
    return _walk(schema, "#", 1, counts)


def _walk(s: Any, path: str, depth: int, counts: dict) -> str | None:
    if not isinstance(s, dict):
        return None if isinstance(s, bool) else f"{path} must be a schema object, not {type(s).__name__}"
    if depth > MAX_DEPTH:
        return f"{path} nests deeper than {MAX_DEPTH} levels"
    for kw in _REFUSED:
        if kw in s:
            return f"{path}: '{kw}' is not supported with strict: true (use anyOf, or make it non-strict)"
    enum = s.get("enum") if isinstance(s.get("enum"), list) else []
    counts["enum"] += len(enum)
    if counts["enum"] > MAX_ENUM_VALUES:
        return f"more than {MAX_ENUM_VALUES} enum values in all"
    names = [*(s.get("properties") or {}), *(s.get("$defs") or {}), *(s.get("definitions") or {}), *enum]
    counts["chars"] += sum(len(str(x)) for x in names) + (len(str(s["const"])) if "const" in s else 0)
    if counts["chars"] > MAX_NAME_CHARS:
        return f"the property names, definition names, enum and const values are longer than {MAX_NAME_CHARS} " \
               "characters in all"
    if _is_object(s):
        props = s.get("properties") or {}
        if not isinstance(props, dict):
            return f"{path}.properties must be an object"
        counts["properties"] += len(props)
        if counts["properties"] > MAX_PROPERTIES:
            return f"more than {MAX_PROPERTIES} object properties in all"
        if s.get("additionalProperties", True) is not False:
            return f"{path}: 'additionalProperties' must be false (and given) for every object"
        required = s.get("required") or []
        missing = [k for k in props if k not in required]
        if missing:
            return (f"{path}: 'required' must list every property; missing {missing[:5]} "
                    "(make a property optional with a type that allows null, e.g. ['string', 'null'])")
    for kw in _MAPS:
        for k, sub in (s.get(kw) or {}).items() if isinstance(s.get(kw), dict) else ():
            nested = depth + (kw == "properties")
            if (why := _walk(sub, f"{path}.{kw}.{k}", nested, counts)) is not None:
                return why
    for kw in _LISTS:
        for i, sub in enumerate(s.get(kw) or ()):
            if (why := _walk(sub, f"{path}.{kw}[{i}]", depth, counts)) is not None:
                return why
    for kw in _ONE:
        if kw in s and kw != "additionalProperties" and (why := _walk(s[kw], f"{path}.{kw}", depth + 1, counts)):
            return why
    return None


def mentions_json(texts: list[str]) -> bool:
    """OpenAI's rule for json_object: the messages must contain the word "json" (any case)."""
    return any("json" in t.lower() for t in texts)
