"""The registered output schema through the real server and the official openai client: the schema inferred
from the demo data's answers, registered with the tiny model's version, is listed by GET /v1/models (an extra
field the client keeps), and `--default-response-format registered` makes every answer of a request that names
no response_format follow it."""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import jsonschema
import openai
import pytest

from ft_pipeline.serving.app import create_app
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline.structured.schema import SchemaCollector
from ft_pipeline_tests._serving import NAME, ServerThread, register_tiny

pytestmark = pytest.mark.slow


def demo_schema() -> dict:
    """The schema inferred from the answers of the demo's chat drop (as the split's `auto` does on train)."""
    from ft_pipeline.data import formats

    c = SchemaCollector()
    drop = formats.read_drop(REPO_ROOT / "data" / "raw" / "2026-01-support_chat.jsonl")
    for row in drop.rows:
        try:
            messages = formats.to_messages(row.data, "openai_chat")
        except Exception:
            continue  # the drop's deliberately broken rows, which cleaning quarantines
        assert c.add_messages(messages), c.why
    schema = c.schema()
    assert schema is not None, c.why
    return schema


@pytest.fixture(scope="module")
def srv(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registered_schema")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    schema = demo_schema()
    register_tiny(tmp, tiny_base, None, output_schema=schema)  # version 1: the tiny base, with the schema
    import mlflow

    from ft_pipeline.registry import versions as registry

    v1 = mlflow.MlflowClient().get_model_version(NAME, "1")
    registry.register(v1.source, NAME, "no-schema", {})  # version 2: the same model, registered without one
    app = create_app(ServeConfig(poll_s=5, batch_window_ms=30, default_max_tokens=96,
                                 default_response_format="registered"))
    with ServerThread(app) as url:
        yield SimpleNamespace(schema=schema, client=openai.OpenAI(base_url=f"{url}/v1", api_key="x",
                                                                  max_retries=0, timeout=120))
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def test_the_demo_schema_is_the_ticket_object():
    schema = demo_schema()
    assert list(schema["properties"]) == ["intent", "product", "order_id", "urgency"]
    assert schema["properties"]["order_id"] == {"type": ["string", "null"]}
    assert schema["properties"]["urgency"] == {"type": "string", "enum": ["medium", "low", "high"]}


def test_models_list_carries_the_registered_schema_and_the_client_parses_it(srv):
    models = {m.id: m for m in srv.client.models.list()}
    assert {NAME, f"{NAME}@champion", f"{NAME}/1", f"{NAME}/2"} <= set(models)
    assert models[NAME].output_schema == srv.schema == models[f"{NAME}/1"].output_schema
    assert models[f"{NAME}/2"].output_schema is None  # a version without one
    assert srv.client.models.retrieve(f"{NAME}/1").model_extra["output_schema"] == srv.schema


def test_default_response_format_registered_makes_every_answer_follow_the_schema(srv):
    prompts = ["I want a refund for order ORD-123456", "my Nimbus 5 laptop will not turn on", "hello",
               "cancel everything now!!", "where is my parcel", "password reset please"]

    def ask(text, model=NAME):
        return srv.client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                                  temperature=0, max_tokens=160)  # builtin:tiny writes about a
    # token a character, and a whole ticket in the registered (json.dumps-spaced) style is about 100 characters

    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(ask, prompts))
    whole = 0
    for out in outs:
        choice = out.choices[0]
        if choice.finish_reason == "stop":
            jsonschema.validate(json.loads(choice.message.content), srv.schema)
            whole += 1
    assert whole >= len(prompts) // 2
    # a version registered without a schema answers free: builtin:tiny then writes near-random bytes
    free = ask("I want a refund for order ORD-123456", f"{NAME}/2").choices[0].message.content
    with pytest.raises((json.JSONDecodeError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free), srv.schema)
