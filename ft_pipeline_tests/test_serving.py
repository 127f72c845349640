"""`ft-pipeline serve` on real registered versions of the builtin tiny model (slow), driven by the official
openai client: answers are the model's own greedy answers, streams join to the same text, the alias moves under
a running server without failing or mixing requests in flight, and every bad request gets its status."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
import yaml

from ft_pipeline.evaluation.scoring import generate, load_tuned
from ft_pipeline.model.base_models import load_model_and_tokenizer
from ft_pipeline.model.training import TrainOptions, train_adapter
from ft_pipeline.registry import versions as registry
from ft_pipeline.serving.app import VERSION_HEADER, create_app
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline_tests._env import isolated_env
from ft_pipeline_tests._serving import NAME, ServerThread, free_port, register_tiny, start_cli_server, wait_until_up
from ft_pipeline_tests.test_training import FAST, records

pytestmark = pytest.mark.slow

KEY = "test-key"
ASK = [{"role": "user", "content": "refund order ORD-100007 please"}]
N = 24


@pytest.fixture(scope="module")
def srv(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    train_adapter(tiny_base, records(), tmp / "ckpt", tmp / "adapter", TrainOptions(**FAST), report_to_mlflow=False)
    uri = register_tiny(tmp, tiny_base, tmp / "adapter")  # version 1: the adapter (champion); 2: the bare base
    # What each version must answer, computed without the server: evaluation.scoring's greedy generation.
    want = {"1": generate(*load_tuned(tiny_base, tmp / "adapter"), [ASK], N)[0],
            "2": generate(*load_model_and_tokenizer(tiny_base), [ASK], N)[0]}
    assert want["1"] != want["2"]  # otherwise a mixed-up version would go unnoticed
    app = create_app(ServeConfig(poll_s=0.3, api_key=KEY, max_body_bytes=64 * 1024, batch_window_ms=20))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
        yield SimpleNamespace(url=url, app=app, client=client, want=want, uri=uri, tmp=tmp)
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def ask(client, model=NAME, **kw):
    return client.chat.completions.create(model=model, messages=kw.pop("messages", ASK), temperature=kw.pop(
        "temperature", 0), max_tokens=kw.pop("max_tokens", N), **kw)


def test_completion_is_the_champions_greedy_answer_and_says_its_version(srv):
    raw = srv.client.chat.completions.with_raw_response.create(model=NAME, messages=ASK, temperature=0, max_tokens=N)
    out = raw.parse()
    assert raw.headers[VERSION_HEADER] == "1" and out.system_fingerprint == f"{NAME}/1"
    assert out.object == "chat.completion" and out.model == NAME and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content.strip() == srv.want["1"]
    # the 4-step adapter does not stop by itself: it uses its whole budget
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == N
    assert out.usage.total_tokens == out.usage.prompt_tokens + N and out.usage.prompt_tokens > 10
    # and it came from the adapter merged into the shared base's weights, answering like base + adapter
    served = srv.app.state.store.get(NAME)
    assert served.shared.merged == served.adapter


def test_streamed_chunks_join_to_the_same_text(srv):
    whole = ask(srv.client, model=f"{NAME}/2").choices[0].message.content
    chunks = list(ask(srv.client, model=f"{NAME}/2", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole and whole.strip() == srv.want["2"]
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed in pieces
    assert {c.system_fingerprint for c in chunks} == {f"{NAME}/2"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == N
    with httpx.stream("POST", f"{srv.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": NAME, "messages": ASK, "max_tokens": 3, "stream": True}) as r:
        lines = [x for x in r.iter_lines() if x]
    assert r.headers["content-type"].startswith("text/event-stream") and r.headers[VERSION_HEADER] == "1"
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)


def test_model_ids_pick_versions_and_aliases_and_are_listed(srv):
    assert ask(srv.client, model=f"{NAME}/2").system_fingerprint == f"{NAME}/2"
    assert ask(srv.client, model=f"{NAME}@champion").system_fingerprint == f"{NAME}/1"
    assert [m.id for m in srv.client.models.list()] == [NAME, f"{NAME}@champion", f"{NAME}/1", f"{NAME}/2"]
    assert srv.client.models.retrieve(f"{NAME}/2").id == f"{NAME}/2"


def test_stop_sequences_end_the_text_before_them(srv):
    whole = ask(srv.client, model=f"{NAME}/2").choices[0].message.content
    stop = whole[9:12]
    cut = whole.find(stop)
    for stream in (False, True):
        got = ask(srv.client, model=f"{NAME}/2", stop=[stop, "never-generated"], stream=stream)
        if stream:
            chunks = [c for c in got if c.choices]
            text, reason = ("".join(c.choices[0].delta.content or "" for c in chunks),
                            chunks[-1].choices[0].finish_reason)
        else:
            text, reason = got.choices[0].message.content, got.choices[0].finish_reason
        assert (text, reason) == (whole[:cut], "stop"), stream


def test_seeded_sampling_repeats_and_differs_from_greedy(srv):
    runs = [ask(srv.client, model=f"{NAME}/2", temperature=1.0, seed=s).choices[0].message.content for s in (7, 7, 8)]
    assert runs[0] == runs[1] and runs[0] != runs[2] and runs[0].strip() != srv.want["2"]


def test_typed_errors_through_the_openai_client(srv):
    with pytest.raises(openai.BadRequestError, match="messages"):
        srv.client.chat.completions.create(model=NAME, messages=[])
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048 tokens"):
        ask(srv.client, messages=[{"role": "user", "content": "a" * 2100}])
    with pytest.raises(openai.NotFoundError, match="no version 99"):
        ask(srv.client, model=f"{NAME}/99")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        ask(srv.client, model="gpt-4o")
    wrong = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(wrong)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert httpx.get(f"{srv.url}/health").json()["models"][NAME]["version"] == "1"  # /health needs no key


def test_a_generation_error_is_a_500_and_the_server_keeps_serving(srv):
    served = srv.app.state.store.get(f"{NAME}/2")

    def boom(*a, **kw):
        raise RuntimeError("simulated failure")

    served.model.generate = boom
    try:
        with pytest.raises(openai.InternalServerError, match="generation failed: RuntimeError: simulated failure"):
            ask(srv.client, model=f"{NAME}/2")
    finally:
        del served.model.generate
    assert ask(srv.client, model=f"{NAME}/2").choices[0].message.content.strip() == srv.want["2"]


AUTH = {"authorization": f"Bearer {KEY}"}


def _cases():
    chat = "/v1/chat/completions"
    ok = {"model": NAME, "messages": ASK, "max_tokens": 8, "temperature": 0}
    js = lambda **kw: json.dumps({**ok, **kw}).encode()  # noqa: E731
    return [  # (name, method, path, body, headers, status)
        ("valid", "POST", chat, js(), AUTH, 200),
        ("valid stream", "POST", chat, js(stream=True), AUTH, 200),
        ("valid v2", "POST", chat, js(model=f"{NAME}/2"), AUTH, 200),
        ("malformed json", "POST", chat, b'{"model": ', AUTH, 400),
        ("not an object", "POST", chat, b'"hello"', AUTH, 400),
        ("missing messages", "POST", chat, json.dumps({"model": NAME}).encode(), AUTH, 400),
        ("empty messages", "POST", chat, js(messages=[]), AUTH, 400),
        ("unknown role", "POST", chat, js(messages=[{"role": "robot", "content": "x"}]), AUTH, 400),
        ("content not a string", "POST", chat, js(messages=[{"role": "user", "content": 42}]), AUTH, 400),
        ("prompt too long", "POST", chat, js(messages=[{"role": "user", "content": "b" * 2100}]), AUTH, 400),
        ("prompt + completion too long", "POST", chat, js(messages=[{"role": "user", "content": "c" * 2000}],
                                                          max_tokens=100), AUTH, 400),
        ("max_tokens 0", "POST", chat, js(max_tokens=0), AUTH, 400),
        ("temperature 5", "POST", chat, js(temperature=5), AUTH, 400),
        ("top_p 2", "POST", chat, js(top_p=2), AUTH, 400),
        ("unknown model", "POST", chat, js(model="gpt-4o"), AUTH, 404),
        ("unknown version", "POST", chat, js(model=f"{NAME}/42"), AUTH, 404),
        ("unknown alias", "POST", chat, js(model=f"{NAME}@staging"), AUTH, 404),
        ("oversized", "POST", chat, js(messages=[{"role": "user", "content": "d" * 70_000}]), AUTH, 413),
        ("oversized chunked", "POST", chat, "chunked", AUTH, 413),  # no Content-Length: counted as it comes
        ("no key", "POST", chat, js(), {}, 401),
        ("wrong key", "POST", chat, js(), {"authorization": "Bearer wrong"}, 401),
        ("unknown route", "GET", "/v1/engines", None, AUTH, 404),
        ("wrong method", "PUT", chat, None, AUTH, 405),  # GET lists stored completions (OpenAI's)
    ]


def test_a_mix_of_bad_and_valid_requests_from_threads_gets_every_status(srv):
    cases = _cases() * 3
    random.Random(0).shuffle(cases)

    def send(case):
        name, method, path, body, headers, _ = case
        if body == "chunked":
            body = iter([b"e" * 40_000] * 3)  # httpx sends an iterator as a chunked upload
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            r = c.request(method, path, content=body, headers={"content-type": "application/json", **headers})
            return r.status_code, r.text, dict(r.headers)

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(send, cases))
    for (name, *_, status), (got, text, headers) in zip(cases, results):
        assert got == status, (name, got, text[:300])
        if status != 200:
            err = json.loads(text)["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["message"], name
        elif "stream" in name:
            assert text.rstrip().endswith("data: [DONE]") and re.search(r'"finish_reason": "(length|stop)"', text), name
        else:
            out = json.loads(text)
            assert out["choices"][0]["message"]["content"] and headers[VERSION_HEADER] in ("1", "2"), name
            assert 0 < out["usage"]["completion_tokens"] <= 8, name
        if name == "prompt too long":
            assert "maximum context length is 2048 tokens" in text and "resulted in 2103 tokens" in text
    assert httpx.get(f"{srv.url}/health").status_code == 200  # still serving


def test_the_alias_moves_under_a_running_server_and_requests_in_flight_finish_on_their_version(srv):
    store = srv.app.state.store
    v1 = store.get(NAME)
    layer = next(m for n, m in v1.model.named_modules() if n.endswith("layers.0"))
    streams, started = [], [threading.Event() for _ in range(4)]
    all_started, swapped_seen = threading.Event(), threading.Event()

    def slow(module, args):
        # Version 1 takes 0.1 s a step; once every stream has its first token, it waits (30 s at most) until the
        # server is seen answering with version 2, so its requests are still generating when version 2 takes over,
        # however slow the machine is at loading version 2.
        time.sleep(0.1)
        if all_started.is_set():
            swapped_seen.wait(30)

    hook = layer.register_forward_pre_hook(slow)
    batcher = srv.app.state.batcher
    window, batcher.window_s = batcher.window_s, 2.0  # the four requests go into one generate call

    def stream(i):
        got = []
        for c in ask(srv.client, stream=True):
            if c.choices and c.choices[0].delta.content:
                got.append((time.monotonic(), c.system_fingerprint, c.choices[0].delta.content))
                started[i].set()
        streams.append(got)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    try:
        for t in threads:
            t.start()
        assert all(e.wait(120) for e in started)
        all_started.set()
        moved = time.monotonic()
        assert registry.promote(NAME, "2") == "1"
        while httpx.get(f"{srv.url}/health").json()["models"][NAME]["version"] != "2":
            assert time.monotonic() - moved < 10, "the server did not follow the alias"
            time.sleep(0.05)
        swapped = time.monotonic()
        swapped_seen.set()
        after = srv.client.chat.completions.with_raw_response.create(model=NAME, messages=ASK, temperature=0,
                                                                     max_tokens=N)
        for t in threads:
            t.join(120)
    finally:
        swapped_seen.set()
        hook.remove()
        batcher.window_s = window
        registry.promote(NAME, "1")  # the tests after this one expect version 1 as the champion
    assert swapped - moved < 5
    assert after.headers[VERSION_HEADER] == "2" and after.parse().choices[0].message.content.strip() == srv.want["2"]
    assert len(streams) == 4
    for got in streams:
        assert {fp for _, fp, _ in got} == {f"{NAME}/1"}  # started on version 1, finished on it
        assert "".join(text for *_, text in got).strip() == srv.want["1"]  # no token of version 2 mixed in
        assert got[-1][0] > swapped  # and they were still generating when version 2 took over
    deadline = time.monotonic() + 10
    while store.current()[NAME]["champion"] != "1" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.current()[NAME]["champion"] == "1"


def test_the_cli_serves_and_follows_the_alias(srv, tmp_path):
    env = {**isolated_env(tmp_path), "MLFLOW_TRACKING_URI": srv.uri}
    log = (tmp_path / "serve.log").open("w")  # a file, not a pipe nobody reads until the end (it could fill)
    proc, url = start_cli_server(env, "--poll-seconds", "0.5", stdout=log, stderr=subprocess.STDOUT)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        assert ask(client).choices[0].message.content.strip() == srv.want["1"]
        registry.promote(NAME, "2")
        deadline = time.monotonic() + 15
        while ask(client, max_tokens=1).system_fingerprint != f"{NAME}/2":
            assert time.monotonic() < deadline, "the CLI's server did not follow the alias"
            time.sleep(0.2)
    finally:
        registry.promote(NAME, "1")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        log.close()
    out = (tmp_path / "serve.log").read_text()
    assert f"OpenAI base_url: {url}/v1" in out
    assert f"{NAME}@champion: version 1 -> 2" in out


def test_mlflow_models_serve_answers_invocations_for_the_same_model(srv, tmp_path):
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "m")))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    # logged as "models from code", not a cloudpickled object
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and (local / "adapter_pyfunc.py").exists()
    assert not list(local.rglob("*.pkl"))
    port = free_port()
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # it execs `uvicorn` from PATH
    log = (tmp_path / "mlflow-serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, "MLFLOW_TRACKING_URI": srv.uri, "PATH": path}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/ping", timeout=300)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": [ASK[0]["content"]]}, timeout=300)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
    assert r.status_code == 200, r.text
    # the pyfunc answers with its default budget (128 new tokens), as ft-pipeline serve does when asked to
    assert r.json()["predictions"] == [ask(srv.client, max_tokens=128).choices[0].message.content.strip()]
