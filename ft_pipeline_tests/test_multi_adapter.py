"""One server, two tasks on one base: two registered models (two LoRA adapters trained differently on the builtin
tiny base) served side by side by one `ft-pipeline serve` app, driven by the official openai client from threads.
Each request answers with its own task's adapter in a mixed batch, exactly as that task served alone does; the
base is loaded once; each task follows its own alias; evicting a version frees its adapter, not the base."""

import gc
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import openai
import pytest

from ft_pipeline.evaluation.scoring import chat_prompt_ids, generate, load_tuned
from ft_pipeline.model.training import TrainOptions, train_adapter
from ft_pipeline.registry import versions as registry
from ft_pipeline.serving.adapters import Bases
from ft_pipeline.serving.app import create_app
from ft_pipeline.serving.batching import Job, generate_group
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline_tests._serving import NAME, ServerThread, register_adapter, register_tiny
from ft_pipeline_tests.test_training import FAST, records

pytestmark = pytest.mark.slow

ROUTING = "routing"  # the second task's registered model
ASK = [{"role": "user", "content": "refund order ORD-100007 please"}]
N = 16


def routing_records(n=24):
    """Another task on the same prompts: plain words, not JSON (the JSON task's 4-step adapter answers quotes)."""
    return [{"messages": [{"role": "user", "content": f"refund order ORD-{100000 + i} please"},
                          {"role": "assistant", "content": "billing team billing team"}]} for i in range(n)]


@pytest.fixture(scope="module")
def two(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-tasks")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    train_adapter(tiny_base, records(), tmp / "ckpt-a", tmp / "a", TrainOptions(**FAST), report_to_mlflow=False)
    train_adapter(tiny_base, routing_records(), tmp / "ckpt-b", tmp / "b",
                  TrainOptions(**{**FAST, "max_steps": 8}, seed=7), report_to_mlflow=False)
    uri = register_tiny(tmp, tiny_base, tmp / "a")  # NAME: version 1 adapter a (champion), 2 the bare base
    assert register_adapter(ROUTING, tiny_base, tmp / "b") == "1"
    want = {NAME: generate(*load_tuned(tiny_base, tmp / "a"), [ASK], N)[0],
            ROUTING: generate(*load_tuned(tiny_base, tmp / "b"), [ASK], N)[0]}
    assert want[NAME] != want[ROUTING]  # otherwise a request answered by the wrong adapter would go unnoticed
    app = create_app(ServeConfig(poll_s=0.3, batch_window_ms=20, store_path=str(tmp / "completions.db")))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        yield SimpleNamespace(url=url, app=app, client=client, want=want, uri=uri, tmp=tmp)
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def ask(client, model, **kw):
    out = client.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=N, **kw)
    return out if kw.get("stream") else (out.choices[0].message.content.strip(), out.system_fingerprint)


def mixed_batch(two):
    """16 requests alternating the two tasks, sent from threads and collected into one batch."""
    models = [NAME, ROUTING] * 8
    batcher = two.app.state.batcher
    batches_before, window, batcher.window_s = len(batcher.batches), batcher.window_s, 5.0  # all 16 in one batch
    try:
        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(lambda m: ask(two.client, m), models))
    finally:
        batcher.window_s = window
    for model, (text, fingerprint) in zip(models, got):
        assert (text, fingerprint) == (two.want[model], f"{model}/1"), model
    return batcher.batches[batches_before:]


def test_a_mixed_batch_from_threads_answers_each_request_with_its_own_adapter(two):
    calls = []
    shared = two.app.state.store.get(NAME).shared
    real = shared.rows
    shared.rows = lambda names: calls.append(list(names)) or real(names)
    try:
        assert mixed_batch(two) == [16]
    finally:
        del shared.rows
    # the 16 requests were collected together and ran as one generate call, each row with its own adapter
    a, b = two.app.state.store.get(NAME).adapter, two.app.state.store.get(ROUTING).adapter
    assert len(calls) == 1 and sorted(calls[0]) == sorted([a, b] * 8)  # rows in the order they arrived
    # and each task served alone by a server of its own answers the same
    for model in (NAME, ROUTING):
        with ServerThread(create_app(ServeConfig(models=(model,), store="none"))) as url:
            alone = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
            assert ask(alone, model) == (two.want[model], f"{model}/1")
            other = ROUTING if model == NAME else NAME
            with pytest.raises(openai.NotFoundError, match=f"this server serves '{model}'"):
                ask(alone, other)


def test_adapters_that_cannot_mix_run_one_merged_call_each(two, monkeypatch):
    shared = two.app.state.store.get(NAME).shared
    monkeypatch.setattr(type(shared), "mixable", lambda self, names: False)  # as for DoRA or LoRA on embeddings
    monkeypatch.setattr(shared, "rows", lambda names: pytest.fail("a batch that cannot mix ran mixed"))
    assert mixed_batch(two) == [16]  # one group; generate_group split it per adapter, and the answers are right


def test_both_tasks_are_listed_and_share_one_base(two):
    ids = [m.id for m in two.client.models.list()]
    assert ids == [NAME, f"{NAME}@champion", f"{NAME}/1", f"{NAME}/2", ROUTING, f"{ROUTING}@champion", f"{ROUTING}/1"]
    catalog = two.app.state.store
    a, b = catalog.get(NAME), catalog.get(ROUTING)
    assert a.model is b.model and a.shared is b.shared and a.adapter != b.adapter
    assert len(catalog.bases.shared()) == 1  # version 2 of NAME (a full model) is a model of its own
    assert {a.adapter, b.adapter} <= set(a.model.peft_config)


def test_unknown_model_ids_are_openais_404(two):
    for model in ("gpt-4o", f"{ROUTING}/9", f"{ROUTING}@staging"):
        with pytest.raises(openai.NotFoundError) as e:
            ask(two.client, model)
        assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model", model


def test_streams_structured_outputs_and_stored_completions_are_per_request(two):
    chunks = list(ask(two.client, ROUTING, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == two.want[ROUTING]
    schema = {"type": "object", "properties": {"team": {"type": "string", "enum": ["billing", "returns"]}},
              "required": ["team"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "route", "schema": schema, "strict": True}}

    def one(model):
        return two.client.chat.completions.create(model=model, messages=ASK, temperature=0, max_tokens=24,
                                                  response_format=fmt if model == ROUTING else None, store=True)

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(one, [ROUTING, NAME, ROUTING, NAME]))
    for model, out in zip([ROUTING, NAME, ROUTING, NAME], outs):
        if model == ROUTING:
            assert json.loads(out.choices[0].message.content)["team"] in ("billing", "returns")
        stored = httpx.get(f"{two.url}/v1/chat/completions/{out.id}").json()
        assert stored["ft_pipeline"]["registered_model"] == model and stored["ft_pipeline"]["version"] == "1"


def test_each_task_follows_its_own_alias(two):
    registry.promote(NAME, "2")
    try:
        deadline = time.monotonic() + 15
        while httpx.get(f"{two.url}/health").json()["models"][NAME]["version"] != "2":
            assert time.monotonic() < deadline, "the server did not follow the alias"
            time.sleep(0.1)
        assert ask(two.client, NAME)[1] == f"{NAME}/2"
        assert ask(two.client, ROUTING) == (two.want[ROUTING], f"{ROUTING}/1")  # the other task did not move
    finally:
        registry.promote(NAME, "1")


def test_an_evicted_version_frees_its_adapter_and_the_base_goes_with_the_last(two):
    bases = Bases()
    a, b = bases.load(NAME, "1"), bases.load(ROUTING, "1")
    shared, gone = a.shared, b.adapter
    assert b.shared is shared and set(shared.model.peft_config) == {a.adapter, b.adapter}
    del b
    gc.collect()
    assert set(shared.model.peft_config) == {a.adapter} and bases.shared() == [shared]  # the base stays
    events = []
    generate_group([Job(a, chat_prompt_ids(a.tokenizer, [ASK])[0], N, lambda *e: events.append(e))])
    assert "".join(e[1] for e in events if e[0] == "delta").strip() == two.want[NAME] and gone not in \
        shared.model.peft_config
    del a
    gc.collect()
    assert bases.shared() == []
