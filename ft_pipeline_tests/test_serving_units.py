"""Serving's parts without a model: request validation and its OpenAI-style errors, stop-string hold-back, model
ids, the batcher's grouping, and the store following an alias on a real MLflow registry (with a fake loader)."""

import json
import os
import threading
import time

import mlflow
import pytest

from ft_pipeline.registry import versions as registry
from ft_pipeline.serving.batching import Batcher, Job, holdback
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline.serving.models import ModelNotFound, ModelStore, NotReady, Served, parse_model_id
from ft_pipeline.serving.protocol import ApiError, context_error, parse_request

OK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def body(**changes):
    return json.dumps({**OK, **changes}).encode()


@pytest.mark.parametrize("raw, param, code", [
    (b"{bad", None, "invalid_json"),  # malformed JSON
    (b"[1, 2]", None, "invalid_json"),  # JSON, but not an object
    (json.dumps({"model": "m"}).encode(), "messages", "missing_required_parameter"),
    (body(messages=[]), "messages", "invalid_value"),  # empty
    (body(messages="hi"), "messages", "invalid_type"),
    (body(messages=[{"role": "wizard", "content": "x"}]), "messages[0].role", "invalid_value"),  # unknown role
    (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "invalid_value"),  # no tools here
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "invalid_type"),  # not a string
    (body(messages=[{"role": "user", "content": {"text": "x"}}]), "messages[0].content", "invalid_type"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content", "invalid_value"),  # a part that is not text
    (body(messages=[{"role": "user"}]), "messages[0].content", "missing_required_parameter"),
    (body(model=3), "model", "invalid_type"),
    (body(max_tokens=0), "max_tokens", "invalid_value"),  # out of range
    (body(max_completion_tokens=-4), "max_completion_tokens", "invalid_value"),
    (body(max_tokens="12"), "max_tokens", "invalid_type"),  # strict: a string is not a number
    (body(temperature=2.5), "temperature", "invalid_value"),
    (body(top_p=0), "top_p", "invalid_value"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop", "invalid_value"),  # OpenAI takes at most 4
    (body(stop=[""]), "stop", "invalid_value"),
    (body(stream="yes"), "stream", "invalid_type"),
    (body(n=2), "n", "unsupported_parameter"),  # refused, not silently ignored
    (body(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    (body(tools=[{"type": "function"}]), "tools", "unsupported_parameter"),
])
def test_bad_requests_are_400_with_the_parameter_named(raw, param, code):
    with pytest.raises(ApiError) as e:
        parse_request(raw)
    err = e.value.body()["error"]
    assert (e.value.status, err["param"], err["code"], err["type"]) == (400, param, code, "invalid_request_error")
    assert err["message"] and (param is None or param in err["message"])


def test_good_requests_parse_with_openai_shapes():
    req = parse_request(body(stop="END", max_completion_tokens=5, max_tokens=9, temperature=0,
                             messages=[{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                         {"type": "text", "text": "b"}]},
                                       {"role": "user", "content": "q"}], user="ignored"))
    assert req.stop == ["END"] and req.budget() == 5  # max_completion_tokens wins over the older max_tokens
    assert req.messages[0].content == "ab" and req.temperature == 0.0
    assert parse_request(body(temperature=1)).temperature == 1.0  # an int is a fine float


def test_context_errors_say_the_length_and_the_limit():
    e = context_error(2048, 3000, None)
    assert e.status == 400 and e.code == "context_length_exceeded" and e.param == "messages"
    assert "maximum context length is 2048 tokens" in e.message and "resulted in 3000 tokens" in e.message
    e = context_error(2048, 2000, 100)
    assert (e.param == "max_tokens"
            and "requested 2100 tokens (2000 in the messages, 100 in the completion)" in e.message)
    assert context_error(2048, 2000, 48) is None and context_error(2048, 2000, None) is None


@pytest.mark.parametrize("text, stops, held", [
    ("hello", (), 0),
    ("hello wor", ("world",), 3),  # "wor" may become "world": held back
    ("hello w", ("world", "xyz"), 1),
    ("hello", ("lo!",), 2),  # the longest tail that starts a stop string
    ("abc\ufffd", (), 1),  # half a character: wait for its other bytes
    ("abc", ("abcd",), 3),
])
def test_holdback(text, stops, held):
    assert holdback(text, stops) == held


@pytest.mark.parametrize("model_id, want", [
    ("ft", ("champion", None)),
    ("ft@staging", ("staging", None)),
    ("ft/3", (None, "3")),
])
def test_model_ids(model_id, want):
    assert parse_model_id(model_id, "ft", "champion") == want


@pytest.mark.parametrize("model_id", ["gpt-4o", "ft/x", "ft@", "ft/3/4", "", "ft@a@b"])
def test_other_model_ids_are_not_found(model_id):
    with pytest.raises(ModelNotFound):
        parse_model_id(model_id, "ft", "champion")


def test_config_reads_the_environment_and_flags_win(monkeypatch):
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("FT_PIPELINE_SERVE_MAX_BATCH", "4")
    monkeypatch.setenv("FT_PIPELINE_API_KEY", "k")
    cfg = ServeConfig.from_env(port=None, max_batch=8)
    assert (cfg.host, cfg.port, cfg.max_batch, cfg.api_key) == ("127.0.0.1", 9001, 8, "k")


def _job(served, **kw):
    return Job(served, [1], 4, lambda *e: None, **kw)


def test_requests_arriving_together_are_generated_together_by_group():
    calls, release = [], threading.Event()

    def run(jobs):
        calls.append(jobs)
        release.wait(5)

    b = Batcher(window_s=0.2, max_batch=4, run=run)
    a, other = object(), object()
    jobs = [_job(a) for _ in range(5)] + [_job(a, temperature=0.7), _job(a, temperature=0.7, seed=1),
                                           _job(other)]
    b.start()
    for j in jobs:
        b.submit(j)
    release.set()
    time.sleep(0.5)
    b.stop()
    sizes = [[jobs.index(j) for j in c] for c in calls]
    # the first window fills to max_batch (4 greedy jobs); the rest form groups: greedy of a, sampled of a,
    # the seeded job alone, and the other version's job
    assert sizes == [[0, 1, 2, 3], [4], [5], [6], [7]]


def test_a_failed_generate_call_fails_its_own_requests_only():
    events = {}

    def run(jobs):
        if jobs[0].temperature == 0:
            raise RuntimeError("out of memory")
        for j in jobs:
            j.emit("done", "stop", 1)

    b = Batcher(window_s=0.2, run=run)
    bad = Job(object(), [1], 4, lambda *e: events.setdefault("bad", e))
    good = Job(bad.served, [1], 4, lambda *e: events.setdefault("good", e), temperature=1.0)
    b.start()
    b.submit(bad)
    b.submit(good)
    time.sleep(0.5)
    b.stop()
    assert events == {"bad": ("error", "generation failed: RuntimeError: out of memory"), "good": ("done", "stop", 1)}


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, model_input: list[str], params=None) -> list[str]:
        return model_input


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=(tmp_path / "a").as_uri()))
    for _ in range(3):
        with mlflow.start_run() as run:
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
        registry.register(info.model_uri, "m", run.info.run_id, {})
    yield
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def fake_load(fail=()):
    loads = []

    def load(name, version):
        loads.append(version)
        if version in fail:
            raise OSError(f"cannot read version {version}")
        return Served(name, version, model=None, tokenizer=None, max_context=64)
    return load, loads


def test_the_store_follows_the_alias_and_a_held_version_stays_valid(store):
    load, loads = fake_load(fail={"3"})
    s = ModelStore("m", poll_s=60, load=load)
    with pytest.raises(NotReady):
        s.get("m")  # no champion yet
    registry.set_champion("m", "1")
    s.refresh()
    held = s.get("m")
    assert held.version == "1" and s.get("m@champion") is held
    registry.promote("m", "2")
    assert s.get("m") is held  # nothing moves between polls
    assert s.refresh() == {"champion": ("1", "2")}
    assert s.get("m").version == "2" and held.version == "1"  # the request holding v1 still has v1
    registry.promote("m", "3")  # a version that fails to load: v2 keeps answering, the error is reported
    assert s.refresh() == {} and s.get("m").version == "2" and "cannot read version 3" in s.last_error
    assert s.get("m/1").version == "1" and loads == ["1", "2", "3"]  # v1 still cached: not loaded again
    with pytest.raises(ModelNotFound):
        s.get("m/9")
    with pytest.raises(ModelNotFound):
        s.get("m@nope")
    ids = [r["id"] for r in s.listing()]
    assert ids == ["m", "m@champion", "m/1", "m/2", "m/3"]


def test_a_streamed_row_gets_each_piece_and_a_plain_one_its_text_once(tiny_base):
    import torch
    from transformers import AutoTokenizer

    from ft_pipeline.serving.batching import _Rows

    tok = AutoTokenizer.from_pretrained(tiny_base)
    ids = tok("order ORD-1", add_special_tokens=False)["input_ids"]
    events = {"stream": [], "plain": []}
    jobs = [Job(object(), [1], len(ids), lambda *e, k=k: events[k].append(e), stream=k == "stream")
            for k in events]
    rows = _Rows(jobs, tok, width=0)
    for n in range(1, len(ids) + 1):
        rows(torch.tensor([ids[:n], ids[:n]]), None)
    assert [e for e in events["stream"] if e[0] == "delta"] == [("delta", tok.decode([i])) for i in ids]
    # no wakeup of the event loop per token for a request that is answered in one piece
    assert events["plain"] == [("delta", "order ORD-1"), ("done", "length", len(ids))]
    assert events["stream"][-1] == ("done", "length", len(ids))
