"""Structured outputs without a server: response_format read and checked as OpenAI does (the strict subset,
the json_object rule), grammars compiled and cached, and the logits mask on a batch of constrained and free rows."""

import json

import pytest
import torch

from ft_pipeline.serving.protocol import ApiError, parse_request
from ft_pipeline.structured.formats import FormatError, parse_response_format, strict_problem

OK = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": ["integer", "null"]}},
      "required": ["a", "b"], "additionalProperties": False}


def request(fmt, content="answer in JSON"):
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}],
                       "response_format": fmt}).encode()


def schema_format(schema, strict=True, name="answer"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def refusal(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse_request(raw)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


def test_text_json_object_and_json_schema_are_read():
    assert parse_request(request({"type": "text"})).format.type == "text"
    assert not parse_request(request(None)).format.constrained
    obj = parse_request(request({"type": "json_object"}, "Reply as Json please")).format  # any case
    assert obj.type == "json_object" and obj.schema == {"type": "object"}
    fmt = parse_request(request(schema_format(OK))).format
    assert fmt.type == "json_schema" and fmt.strict and fmt.schema == OK and fmt.name == "answer"
    # the cache key follows the schema as written: key order matters, and strict is part of it
    again = parse_response_format(schema_format(dict(OK)))
    flipped = parse_response_format(schema_format(dict(reversed(list(OK.items())))))
    assert again.key == fmt.key != flipped.key != parse_response_format(schema_format(OK, strict=False)).key


def test_json_object_needs_the_word_json_in_the_messages():
    e = refusal(request({"type": "json_object"}, "give me an object"))
    assert e.param == "messages" and "must contain the word 'json'" in e.message


DEEP = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
node = DEEP
for _ in range(11):
    child = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
    node["properties"]["x"], node["required"] = child, ["x"]
    node = child


@pytest.mark.parametrize("schema, says", [
    ({"type": "array", "items": {"type": "string"}}, "root must be an object"),
    ({**OK, "additionalProperties": True}, "'additionalProperties' must be false"),
    ({k: v for k, v in OK.items() if k != "additionalProperties"}, "'additionalProperties' must be false"),
    ({**OK, "required": ["a"]}, "missing ['b']"),
    ({**OK, "properties": {**OK["properties"], "c": {"type": "object", "properties": {"d": {"type": "string"}},
                                                     "required": ["d"]}}, "required": ["a", "b", "c"]},
     "#.properties.c: 'additionalProperties' must be false"),
    ({**OK, "allOf": [{"type": "object"}]}, "'allOf' is not supported"),
    ({**OK, "properties": {**OK["properties"], "a": {"not": {"type": "string"}}}}, "'not' is not supported"),
    ({**OK, "if": {"type": "object"}, "then": {}}, "'if' is not supported"),
    (DEEP, "nests deeper than 10 levels"),
    ({**OK, "properties": {f"p{i}": {"type": "string"} for i in range(5001)},
      "required": [f"p{i}" for i in range(5001)]}, "more than 5000 object properties"),
])
def test_strict_schemas_outside_the_subset_are_a_400_naming_the_problem(schema, says):
    assert says in strict_problem(schema)
    e = refusal(request(schema_format(schema)))
    assert e.param == "response_format" and says in e.message and "answer" in e.message
    parse_request(request(schema_format(schema, strict=False)))  # not strict: no subset to keep


@pytest.mark.parametrize("fmt, says", [
    ({"type": "xml"}, "type must be"),
    ("json", "must be an object"),
    ({"type": "json_schema"}, "needs 'json_schema'"),
    ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": OK}}, "json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "must be a JSON Schema object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": OK, "strict": "yes"}}, "strict must be"),
])
def test_malformed_response_formats_are_a_400(fmt, says):
    e = refusal(request(fmt))
    assert e.param == "response_format" and says in e.message


@pytest.fixture(scope="module")
def grammars(tiny_base):
    from ft_pipeline.evaluation.scoring import load_tokenizer
    from ft_pipeline.structured.grammar import Grammars

    return Grammars(load_tokenizer(tiny_base))


def test_schemas_that_do_not_compile_name_the_problem_and_compiled_ones_are_cached(grammars):
    with pytest.raises(FormatError, match="Invalid type: foo"):
        grammars.matcher(parse_response_format(schema_format({"type": "foo"}, strict=False)))
    fmt = parse_response_format(schema_format(OK))
    a, b = grammars.matcher(fmt), grammars.matcher(fmt)
    assert a is not b and fmt.key in grammars.compile_s
    assert grammars.matcher(parse_response_format({"type": "text"})) is None


def test_the_mask_constrains_grammar_rows_only_and_ends_a_complete_document_with_eos(grammars):
    from ft_pipeline.structured.grammar import GrammarMask

    tok_eos, width = grammars.eos, grammars.vocab_size
    fmt = parse_response_format({"type": "json_object"})
    ended = set()
    mask = GrammarMask([grammars.matcher(fmt), None, grammars.matcher(fmt)], tok_eos, ended=lambda r: r in ended)
    scores = torch.zeros(3, width)
    out = mask(torch.zeros(3, 1, dtype=torch.long), scores.clone())
    allowed = [set(torch.nonzero(out[r] > float("-inf")).flatten().tolist()) for r in range(3)]
    brace, close = (grammars.ll_tok.tokenize_str(c)[0] for c in "{}")  # builtin:tiny: one token a byte
    assert allowed[0] == allowed[2] == {brace} and len(allowed[1]) == width
    ended.add(2)  # row 2 stopped by a stopping criterion: never fed again, never masked again
    for token in (brace, close):
        ids = torch.tensor([[token], [5], [999999]])
        out = mask(ids, torch.zeros(3, width))
    assert torch.isfinite(out[1]).all() and torch.isfinite(out[2]).all()
    assert torch.nonzero(out[0] > float("-inf")).flatten().tolist() == [tok_eos]  # "{}" is whole: only eos
