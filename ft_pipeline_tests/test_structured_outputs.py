"""Structured outputs through the official openai client against the real server: `parse()` with a pydantic
model, json_schema answers that validate (streamed and not), constrained and free requests batched together,
bad schemas refused while the requests around them succeed, and a max_tokens cut.

builtin:tiny is an untrained model that writes near-random bytes when free, so every constrained answer that
is whole (finish_reason "stop") validating against its schema is the test of the mask."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Annotated, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from ft_pipeline.serving.app import create_app
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline_tests._serving import NAME, ServerThread, register_tiny

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "refund order ORD-100007 please, answer in json"}]


class Ticket(BaseModel):
    intent: Literal["refund", "cancel", "other"]
    urgent: bool
    items: Annotated[int, Field(ge=0, le=99)]
    note: Annotated[str, Field(max_length=6)] | None


TICKET = {"type": "object", "additionalProperties": False, "required": ["order", "intent", "priority"],
          "properties": {"order": {"type": "string", "pattern": "^ORD-[0-9]{3}$"},
                         "intent": {"enum": ["refund", "cancel"]},
                         "priority": {"type": ["integer", "null"], "minimum": 1, "maximum": 5}}}
SHORT = {"type": "object", "additionalProperties": False, "required": ["ok", "tag"],
         "properties": {"ok": {"type": "boolean"}, "tag": {"type": "string", "maxLength": 5}}}


def schema_format(schema, name="ticket", strict=True):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


@pytest.fixture(scope="module")
def srv(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("structured")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    register_tiny(tmp, tiny_base, None)  # version 1: the tiny base as a full model, champion
    app = create_app(ServeConfig(poll_s=5, batch_window_ms=30, default_max_tokens=64))
    with ServerThread(app) as url:
        yield SimpleNamespace(url=url, app=app, client=openai.OpenAI(base_url=f"{url}/v1", api_key="x",
                                                                     max_retries=0, timeout=120))
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def ask(client, fmt=None, max_tokens=120, **kw):
    extra = {"response_format": fmt} if fmt is not None else {}
    return client.chat.completions.create(model=NAME, messages=kw.pop("messages", ASK), temperature=kw.pop(
        "temperature", 0), max_tokens=max_tokens, **extra, **kw)


def whole_and_valid(out, schema) -> bool:
    """True when the answer is whole and validates; a `length` cut is allowed (and then not checked)."""
    choice = out.choices[0]
    if choice.finish_reason == "length":
        return False
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), schema)
    return True


def test_parse_with_a_pydantic_model_returns_the_typed_object(srv):
    out = srv.client.chat.completions.parse(model=NAME, messages=ASK, response_format=Ticket, temperature=0,
                                            max_tokens=120)
    msg = out.choices[0].message
    assert isinstance(msg.parsed, Ticket) and msg.refusal is None and out.choices[0].finish_reason == "stop"
    assert Ticket.model_validate_json(msg.content) == msg.parsed
    assert " " not in msg.content.replace(msg.parsed.note or "", "")  # compact JSON
    for seed in range(2):  # sampled answers are typed objects too
        out = srv.client.chat.completions.parse(model=NAME, messages=ASK, response_format=Ticket, temperature=1,
                                                seed=seed, max_tokens=120)
        assert isinstance(out.choices[0].message.parsed, Ticket)


def test_json_schema_answers_validate_and_streamed_chunks_join_to_them(srv):
    out = ask(srv.client, schema_format(TICKET))
    assert whole_and_valid(out, TICKET) and out.choices[0].message.refusal is None
    chunks = list(ask(srv.client, schema_format(TICKET), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # json_object: any JSON object; strict false: the schema is still enforced, best effort
    obj = ask(srv.client, {"type": "json_object"}, max_tokens=120)
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    assert whole_and_valid(ask(srv.client, schema_format(SHORT, "short", strict=False)), SHORT)


def test_sixteen_threads_mixing_constrained_and_free_requests_are_each_answered_right(srv):
    kinds = [("ticket", TICKET), ("short", SHORT), ("pydantic", None), ("free", None)] * 4
    alone = {k: ask(srv.client, schema_format(s, k) if s else None).choices[0].message.content
             for k, s in kinds[:2] + [kinds[3]]}
    before = list(srv.app.state.batcher.batches)

    def send(kind):
        name, schema = kind
        if name == "pydantic":
            return srv.client.chat.completions.parse(model=NAME, messages=ASK, response_format=Ticket,
                                                     temperature=0, max_tokens=120)
        return ask(srv.client, schema_format(schema, name) if schema else None)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, kinds))
    for (name, schema), out in zip(kinds, results):
        if name == "pydantic":
            assert isinstance(out.choices[0].message.parsed, Ticket)
        else:
            assert out.choices[0].message.content == alone[name], name  # the batch changes no answer
        if schema:
            assert whole_and_valid(out, schema), name
    assert max(srv.app.state.batcher.batches[len(before):]) > 1  # they really shared generate calls


BAD = [
    (schema_format({"type": "array", "items": {"type": "string"}}), "root must be an object"),
    (schema_format({**TICKET, "additionalProperties": True}), "'additionalProperties' must be false"),
    (schema_format({**TICKET, "required": ["order"]}), "'required' must list every property"),
    (schema_format({**TICKET, "allOf": [{"type": "object"}]}), "'allOf' is not supported"),
    (schema_format({"type": "object", "properties": {"a": {"type": "wizard"}}}, strict=False), "wizard"),
    ({"type": "json_schema", "json_schema": {"name": "no schema"}}, "json_schema.name"),
    ({"type": "yaml"}, "type must be"),
]


def test_bad_schemas_get_their_400_while_the_valid_requests_around_them_succeed(srv):
    cases = [("bad", fmt, says) for fmt, says in BAD] + [("good", schema_format(TICKET), None)] * 6
    cases.append(("no json word", {"type": "json_object"}, "must contain the word 'json'"))

    def send(case):
        kind, fmt, _ = case
        messages = [{"role": "user", "content": "an object please"}] if kind == "no json word" else ASK
        try:
            return ask(srv.client, fmt, messages=messages)
        except openai.BadRequestError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, cases))
    for (kind, fmt, says), got in zip(cases, results):
        if kind == "good":
            assert whole_and_valid(got, TICKET)
        else:
            assert isinstance(got, openai.BadRequestError), (kind, fmt)
            err = got.body
            assert says in err["message"] and err["type"] == "invalid_request_error", (fmt, err)
            assert err["param"] == ("messages" if kind == "no json word" else "response_format")
    assert httpx.get(f"{srv.url}/health").status_code == 200  # still serving


def test_a_max_tokens_cut_is_length_with_the_cut_text_and_parse_raises(srv):
    whole = ask(srv.client, schema_format(TICKET)).choices[0].message.content
    cut = ask(srv.client, schema_format(TICKET), max_tokens=5)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
    assert whole.startswith(cut.choices[0].message.content) and cut.choices[0].message.content.startswith('{"')
    with pytest.raises(openai.LengthFinishReasonError):
        srv.client.chat.completions.parse(model=NAME, messages=ASK, response_format=Ticket, temperature=0,
                                          max_tokens=4)


def test_the_registered_pyfunc_takes_response_format_as_a_param(srv):
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    assert {p.name for p in model.metadata.signature.params} == {"max_new_tokens", "response_format"}
    fmt = json.dumps(schema_format(SHORT, "short"))
    answers = model.predict(["refund please", "cancel it"], params={"response_format": fmt, "max_new_tokens": 120})
    for text in answers:
        jsonschema.validate(json.loads(text), SHORT)
    assert len(model.predict(["hi"], params={"max_new_tokens": 3})[0].encode()) <= 3 * 4  # free text, still
    with pytest.raises(Exception, match="root must be an object"):
        model.predict(["hi"], params={"response_format": json.dumps(schema_format({"type": "array"}))})
