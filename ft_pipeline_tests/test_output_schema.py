"""The schema of a model's answers: inferred from the train answers in OpenAI's strict subset (nullable fields,
enums of few-valued strings, nested objects, arrays, mixed types as anyOf, none when an answer is not an
object), and the split's `output_schema` knob (auto, off, a file, a bad file named with its problem)."""

import json

import pytest

from ft_pipeline.structured.formats import strict_problem
from ft_pipeline.structured.schema import ENUM_MIN_SEEN, SchemaCollector, infer_schema


def obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


LABELS = ["low", "medium", "high"] * 10  # 30 values, 3 distinct: an enum
FREE = [f"ORD-{i}" for i in range(30)]  # 30 distinct: a free string

CASES = [
    ("types", [{"a": "x", "n": 1, "f": 1.5, "b": True}], obj({"a": {"type": "string"}, "n": {"type": "integer"},
                                                               "f": {"type": "number"}, "b": {"type": "boolean"}})),
    ("null in some answers is nullable", [{"a": "x"}, {"a": None}], obj({"a": {"type": ["string", "null"]}})),
    ("a key some answers lack is nullable, keys in first-seen order", [{"b": 1}, {"a": "x", "b": 2}],
     obj({"b": {"type": "integer"}, "a": {"type": ["string", "null"]}})),
    ("few distinct strings seen often: enum", [{"u": u} for u in LABELS],
     obj({"u": {"type": "string", "enum": ["low", "medium", "high"]}})),
    ("a nullable enum lists null", [{"u": u} for u in LABELS] + [{"u": None}],
     obj({"u": {"type": ["string", "null"], "enum": ["low", "medium", "high", None]}})),
    ("many distinct strings: free", [{"id": i} for i in FREE], obj({"id": {"type": "string"}})),
    ("few distinct but seen too rarely: free", [{"u": u} for u in LABELS[:ENUM_MIN_SEEN - 1]],
     obj({"u": {"type": "string"}})),
    ("integer and number: number", [{"x": 1}, {"x": 2.5}], obj({"x": {"type": "number"}})),
    ("mixed types: anyOf", [{"x": "a"}, {"x": 1}, {"x": None}],
     obj({"x": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}})),
    ("nested objects, a nullable one as anyOf", [{"o": {"k": 1}}, {"o": {"k": 2, "j": "s"}}, {"o": None}],
     obj({"o": {"anyOf": [obj({"k": {"type": "integer"}, "j": {"type": ["string", "null"]}}), {"type": "null"}]}})),
    ("arrays with their items' schema", [{"t": ["a", "b"]}, {"t": []}, {"t": [3]}],
     obj({"t": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}})),
    ("arrays of objects", [{"t": [{"k": True}]}],
     obj({"t": {"type": "array", "items": obj({"k": {"type": "boolean"}})}})),
    ("only empty arrays", [{"t": []}], obj({"t": {"type": "array", "items": {"type": "null"}, "maxItems": 0}})),
]


@pytest.mark.parametrize("answers,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_inferred_schema(answers, want):
    got = infer_schema(answers)
    assert got == want and strict_problem(got) is None
    assert json.dumps(list(got["properties"])) == json.dumps(list(want["properties"]))  # key order too


@pytest.mark.parametrize("answers", [[{"a": 1}, ["a"]], [{"a": 1}, "text"], [], [{"a": 1}, None]])
def test_no_schema_when_an_answer_is_not_an_object(answers):
    assert infer_schema(answers) is None


def test_too_deep_is_no_schema_rather_than_outside_the_strict_subset():
    deep = {"v": 1}
    for _ in range(12):
        deep = {"o": deep}
    assert infer_schema([deep]) is None


def test_the_collector_reads_answer_texts_and_names_the_first_that_is_not_an_object():
    c = SchemaCollector()
    assert c.add_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": '{"a": 1}'}])
    assert not c.add_text("sure, here it is", "d.jsonl line 7")
    assert c.schema() is None and c.why == "an answer is not a JSON object (d.jsonl line 7)"
    assert SchemaCollector().schema() is None


@pytest.mark.parametrize("texts, separators", [
    # json.dumps' default, as the demo answers are written: the grammar must write the same
    (['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}'], {"item_separator": ", ", "key_separator": ": "}),
    (['{"a":1,"b":"x"}', '{"a":2,"b":"y"}'], {"item_separator": ",", "key_separator": ":"}),
    # the style most answers use exactly wins; an answer in neither (indented) does not vote
    (['{"a": 1, "b": "x"}', '{"a": 2, "b": "y"}', '{"a":3,"b":"z"}', '{\n  "a": 4,\n  "b": "w"\n}'],
     {"item_separator": ", ", "key_separator": ": "}),
    (['{\n  "a": 4,\n  "b": "w"\n}'], None),
])
def test_the_collected_schema_says_how_the_answers_were_written(texts, separators):
    c = SchemaCollector()
    assert all(c.add_text(t) for t in texts)
    assert c.schema().get("x-guidance") == separators and strict_problem(c.schema()) is None


def test_the_grammar_writes_json_the_way_the_model_was_taught(tiny_base):
    """Compact by default; with the registered schema's separators, exactly those (never free whitespace)."""
    from ft_pipeline.evaluation.scoring import load_tokenizer
    from ft_pipeline.structured.formats import parse_response_format
    from ft_pipeline.structured.grammar import Grammars

    tok = load_tokenizer(tiny_base)
    fmt = parse_response_format({"type": "json_schema", "json_schema": {
        "name": "answer", "schema": obj({"a": {"type": "integer"}, "b": {"type": "string"}}), "strict": True}})

    def accepts(g, text):
        m = g.matcher(fmt)
        return m.consume_tokens(tok.encode(text, add_special_tokens=False)) and m.is_accepting()

    compact, spaced = Grammars(tok), Grammars(tok, separators={"item_separator": ", ", "key_separator": ": "})
    assert accepts(compact, '{"a":1,"b":"x"}') and not accepts(compact, '{"a": 1, "b": "x"}')
    assert accepts(spaced, '{"a": 1, "b": "x"}') and not accepts(spaced, '{"a":1,"b":"x"}')
    assert not accepts(spaced, '{"a":  1, "b": "x"}')


def test_inferred_schemas_compile_with_llguidance(tiny_base):
    from ft_pipeline.evaluation.scoring import load_tokenizer
    from ft_pipeline.structured.formats import parse_response_format
    from ft_pipeline.structured.grammar import Grammars

    g = Grammars(load_tokenizer(tiny_base))
    for _, answers, _ in CASES:
        fmt = parse_response_format({"type": "json_schema", "json_schema": {
            "name": "answer", "schema": infer_schema(answers), "strict": True}})
        assert g.matcher(fmt) is not None


# --- the split's knob -------------------------------------------------------------------------------------------

def _split(tmp_path, answers, output_schema="auto"):
    from ft_pipeline.data.cleaning import example_id, near_dup_key
    from ft_pipeline.data.splitting import SplitOptions, split_files

    rows = []
    for i, a in enumerate(answers):
        msgs = [{"role": "user", "content": f"question number {i} " * 3}, {"role": "assistant", "content": a}]
        rows.append({"drop": "a.jsonl", "line": i + 1, "id": example_id(msgs), "near_key": near_dup_key(msgs),
                     "messages": msgs})
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "split"
    out.mkdir(exist_ok=True)
    manifest = split_files({"a.jsonl": src}, out, SplitOptions(0.2, 0, None, output_schema=output_schema))
    return manifest, out


ANSWERS = [json.dumps({"intent": ["refund", "cancel"][i % 2], "order_id": None if i % 3 else f"ORD-{i}"})
           for i in range(60)]


def test_auto_infers_from_the_train_answers_and_records_it(tmp_path):
    import hashlib

    manifest, out = _split(tmp_path, ANSWERS)
    text = (out / "output_schema.json").read_text()
    assert json.loads(text) == {**obj({"intent": {"type": "string", "enum": ["refund", "cancel"]},
                                       "order_id": {"type": ["string", "null"]}}),
                                "x-guidance": {"item_separator": ", ", "key_separator": ": "}}  # json.dumps'
    info = manifest["output_schema"]
    assert info["source"] == "inferred" and info["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert info["answers"] == manifest["train"]


def test_auto_gives_none_when_an_answer_is_not_json_and_off_gives_none(tmp_path):
    manifest, out = _split(tmp_path, ANSWERS)
    assert (out / "output_schema.json").exists()
    manifest, out = _split(tmp_path, ANSWERS[:-1] + ["I cannot help with that."] * 5)
    assert not (out / "output_schema.json").exists()  # a stale one is removed
    assert manifest["output_schema"]["sha256"] is None
    assert "not a JSON object" in manifest["output_schema"]["why_none"]
    manifest, out = _split(tmp_path, ANSWERS, "off")
    assert manifest["output_schema"] == {"source": "off", "why_none": "output_schema: off", "sha256": None}
    assert not (out / "output_schema.json").exists()


def test_a_schema_file_is_used_as_given(tmp_path):
    given = obj({"verdict": {"type": "string", "enum": ["yes", "no"]}})
    path = tmp_path / "given.json"
    path.write_text(json.dumps(given))
    manifest, out = _split(tmp_path, ANSWERS, str(path))
    assert json.loads((out / "output_schema.json").read_text()) == given
    assert manifest["output_schema"]["source"] == "file" and manifest["output_schema"]["sha256"]


@pytest.mark.parametrize("content,says", [
    (None, "no such file"), ("{not json", "not valid JSON"), ("[1]", "must be a JSON Schema object"),
    (json.dumps({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
     "'additionalProperties' must be false"),
])
def test_a_bad_schema_file_fails_with_one_line_naming_the_file_and_problem(tmp_path, content, says):
    from ft_pipeline.data.output_schema import SchemaFileError
    from ft_pipeline.defs.data import SplitConfig

    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SchemaFileError) as e:
        _split(tmp_path, ANSWERS, str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and says in msg
    with pytest.raises(Exception, match="output_schema") as e:  # a preset fails before any step runs
        SplitConfig(output_schema=str(path))
    assert says in str(e.value)


def test_a_relative_schema_path_is_relative_to_the_checkout():
    from ft_pipeline.data.output_schema import SchemaFileError, check_output_schema
    from ft_pipeline.settings import REPO_ROOT

    with pytest.raises(SchemaFileError, match=str(REPO_ROOT / "configs" / "nope.json")):
        check_output_schema("configs/nope.json")
    assert check_output_schema("auto") is None and check_output_schema("off") is None
