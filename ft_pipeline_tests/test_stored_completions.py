"""Stored completions on the real server (slow): the official openai client sends `store=True` and `metadata`,
lists, retrieves, reads the messages of, updates and deletes what was stored; OpenAI's 400s and 404s; `--store
all` and `none`; personal data redacted at capture; and a server SIGKILLed under load loses nothing it
acknowledged."""

import math
import os
import signal
import subprocess
import threading
from types import SimpleNamespace

import httpx
import openai
import pytest
import torch

from ft_pipeline.evaluation.scoring import chat_prompt_ids
from ft_pipeline.serving.app import create_app
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline.traffic.store import CompletionStore
from ft_pipeline_tests._env import isolated_env
from ft_pipeline_tests._serving import NAME, ServerThread, register_tiny, start_cli_server

pytestmark = pytest.mark.slow

N = 8


def q(i: int) -> list[dict]:
    return [{"role": "user", "content": f"refund order ORD-1000{i:02d} please"}]


@pytest.fixture(scope="module")
def srv(tiny_base, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stored")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    uri = register_tiny(tmp, tiny_base, None)  # version 1: the tiny base, champion
    app = create_app(ServeConfig(poll_s=0.5, batch_window_ms=10, store_path=str(tmp / "completions.db")))
    with ServerThread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        yield SimpleNamespace(url=url, app=app, client=client, uri=uri, tmp=tmp, db=tmp / "completions.db")
    os.environ.pop("MLFLOW_TRACKING_URI") if old is None else os.environ.__setitem__("MLFLOW_TRACKING_URI", old)


def ask(client, i=0, **kw):
    return client.chat.completions.create(model=kw.pop("model", NAME), messages=kw.pop("messages", q(i)),
                                          temperature=0, max_tokens=N, **kw)


def test_stored_completions_list_retrieve_messages_update_delete(srv):
    c = srv.client
    made = [ask(c, i, store=True, metadata={"app": "demo", "batch": str(i % 2)}) for i in range(5)]
    plain = ask(c, 9)  # store not asked: not stored
    ids = [m.id for m in made]
    got = c.chat.completions.retrieve(ids[0])
    assert got.id == ids[0] and got.object == "chat.completion" and got.metadata == {"app": "demo", "batch": "0"}
    assert got.choices[0].message.content == made[0].choices[0].message.content
    assert got.usage.completion_tokens == made[0].usage.completion_tokens and got.model == NAME
    extra = got.model_extra["ft_pipeline"]
    assert extra["version"] == "1" and extra["review"] is None and extra["latency_ms"] > 0
    assert extra["stored"] == "requested" and extra["mean_logprob"] < 0
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(plain.id)

    listed = [x.id for x in c.chat.completions.list(metadata={"app": "demo"}, limit=2)]  # pages through all
    assert listed == ids
    page = c.chat.completions.list(limit=2, order="desc", metadata={"app": "demo"})
    assert [x.id for x in page.data] == ids[:-3:-1] and page.has_more
    assert [x.id for x in c.chat.completions.list(after=ids[1], limit=2, metadata={"app": "demo"}).data] == ids[2:4]
    assert [x.id for x in c.chat.completions.list(metadata={"app": "demo", "batch": "1"})] == ids[1::2]
    assert [x.id for x in c.chat.completions.list(model=f"{NAME}/1", metadata={"app": "demo"})] == ids
    assert list(c.chat.completions.list(model="gpt-4o")) == []

    msgs = list(c.chat.completions.messages.list(ids[2]))
    assert [(m.role, m.content) for m in msgs] == [("user", q(2)[0]["content"])] and msgs[0].id == f"{ids[2]}-0"

    up = c.chat.completions.update(ids[3], metadata={"app": "demo", "review": "accepted", "reviewer": "ana"})
    assert up.metadata["review"] == "accepted" and up.model_extra["ft_pipeline"]["reviewer"] == "ana"
    up = c.chat.completions.update(ids[4], metadata={"app": "demo", "correction": "Refund issued."})
    assert (up.model_extra["ft_pipeline"]["review"], up.model_extra["ft_pipeline"]["correction"]) == (
        "corrected", "Refund issued.")
    assert up.model_extra["ft_pipeline"]["reviewer"] == "api"
    assert [x.id for x in c.chat.completions.list(metadata={"review": "accepted"})] == [ids[3]]

    deleted = c.chat.completions.delete(ids[0])
    assert deleted.deleted and deleted.id == ids[0] and deleted.object == "chat.completion.deleted"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.delete(ids[0])


def test_streamed_completions_are_stored_before_done(srv):
    chunks = list(srv.client.chat.completions.create(model=NAME, messages=q(3), temperature=0, max_tokens=N,
                                                     stream=True, store=True, metadata={"kind": "stream"}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    got = srv.client.chat.completions.retrieve(chunks[0].id)
    assert got.choices[0].message.content == text and got.metadata == {"kind": "stream"}


def test_openai_errors_for_metadata_unknown_ids_and_bad_filters(srv):
    c = srv.client
    for md, param in [({f"k{i}": "v" for i in range(17)}, "metadata"), ({"k" * 65: "v"}, "metadata"),
                      ({"k": "v" * 513}, "metadata.k"), ({"k": 1}, "metadata.k"), ({"review": "meh"},
                                                                                    "metadata.review")]:
        with pytest.raises(openai.BadRequestError) as e:
            ask(c, store=True, metadata=md)
        assert e.value.body["param"] == param and e.value.status_code == 400
    some = ask(c, store=True).id
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.update(some, metadata={"k": "v" * 513})
    for bad in ["chatcmpl-nope"]:
        for call in (c.chat.completions.retrieve, c.chat.completions.delete, c.chat.completions.messages.list):
            with pytest.raises(openai.NotFoundError):
                call(bad)
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.update(bad, metadata={})
    for params, param in [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "x"}, "limit"),
                          ({"order": "up"}, "order"), ({"after": "chatcmpl-nope"}, "after"),
                          ({"metadata": "x"}, "metadata"), ({"limt": 3}, "limt")]:
        r = httpx.get(f"{srv.url}/v1/chat/completions", params=params)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == param and set(err) == {"message", "type", "param", "code"}


def test_personal_data_is_redacted_at_capture_and_counted(srv):
    said = [{"role": "user", "content": "I am jo@example.com, call me on +1 415 555 0100 about my refund"}]
    out = ask(srv.client, messages=said, store=True, metadata={"customer": "jo@example.com"})
    got = srv.client.chat.completions.retrieve(out.id)
    stored = list(srv.client.chat.completions.messages.list(out.id))[0].content
    assert stored == "I am [EMAIL], call me on [PHONE] about my refund"
    assert got.metadata == {"customer": "[EMAIL]"}  # a metadata value is user text too
    assert got.model_extra["ft_pipeline"]["redactions"] == {"EMAIL": 2, "PHONE": 1}
    up = srv.client.chat.completions.update(out.id, metadata={"correction": "Call jo on +1 415 555 0100."})
    assert up.metadata == {"correction": "Call jo on [PHONE]."}
    assert up.model_extra["ft_pipeline"]["redactions"] == {"EMAIL": 2, "PHONE": 2}
    assert b"jo@example.com" not in b"".join(p.read_bytes() for p in srv.tmp.glob("completions.db*"))


def test_mean_logprob_is_the_models_own(srv):
    out = ask(srv.client, 5, store=True)
    mean = srv.client.chat.completions.retrieve(out.id).model_extra["ft_pipeline"]["mean_logprob"]
    served = srv.app.state.store.get(NAME)
    ids = torch.tensor(chat_prompt_ids(served.tokenizer, [q(5)]))
    with torch.inference_mode():
        gen = served.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=N,
                                    do_sample=False, output_logits=True, return_dict_in_generate=True,
                                    pad_token_id=served.tokenizer.eos_token_id)
    new = gen.sequences[0, ids.shape[1]:]
    lps = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(gen.logits, new)]
    assert len(lps) == out.usage.completion_tokens and math.isclose(mean, sum(lps) / len(lps), abs_tol=1e-3)


@pytest.mark.parametrize("mode", ["all", "none"])
def test_the_store_flag_stores_every_request_or_none(srv, tmp_path, mode):
    db = tmp_path / "c.db"
    app = create_app(ServeConfig(poll_s=0.5, batch_window_ms=10, store=mode, store_path=str(db)))
    with ServerThread(app) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        asked, unasked = ask(c, 1, store=True), ask(c, 2)
        listed = [x.id for x in c.chat.completions.list()]
    if mode == "all":
        assert listed == [asked.id, unasked.id]
        assert [r["requested"] for r in CompletionStore(db).list()[0]] == [True, False]
    else:
        assert listed == []


def test_a_sigkilled_server_keeps_every_acknowledged_completion(srv, tmp_path):
    env = {**isolated_env(tmp_path), "MLFLOW_TRACKING_URI": srv.uri}
    log = (tmp_path / "serve.log").open("w")
    proc, url = start_cli_server(env, "--batch-window-ms", "5", stdout=log, stderr=subprocess.STDOUT)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=60)
    acked, lock, want = [], threading.Lock(), 40

    def worker(k):
        i = 0
        while True:
            try:
                out = ask(client, (k * 7 + i) % 50, store=True, metadata={"worker": str(k)})
            except openai.APIError:  # the server is gone
                return
            i += 1
            with lock:
                acked.append(out.id)
                if len(acked) == want:  # the moment the 40th is acknowledged, with others still in flight
                    proc.send_signal(signal.SIGKILL)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    proc.wait(timeout=30)
    log.close()
    assert proc.returncode == -signal.SIGKILL and len(acked) >= want
    db = tmp_path / "home" / "traffic" / "completions.db"
    store = CompletionStore(db)
    stored = {r["id"] for r in store.list(limit=100)[0]}
    assert set(acked) <= stored
    assert store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
