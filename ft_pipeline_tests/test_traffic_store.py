"""The stored-completions store (traffic.store, traffic.capture) without a server: WAL mode, ordering and
pagination, metadata filters and limits, verdicts, retention, deletion leaving no text behind, a reader while
another process writes, and redaction at capture."""

import json
import multiprocessing as mp
import sqlite3
import time

import pytest

from ft_pipeline.traffic.capture import MetadataError, check_metadata, record, verdict_from_metadata
from ft_pipeline.traffic.store import CompletionStore, NotFound


def rec(i: int, created: int | None = None, **kw) -> dict:
    base = dict(id=f"chatcmpl-{i:04d}", created=created if created is not None else 1_700_000_000 + i,
                model=kw.pop("model", "ft-pipeline-adapter"), registered_model="ft-pipeline-adapter",
                version=kw.pop("version", "1"), messages=[{"role": "user", "content": f"question {i}"}],
                answer=kw.pop("answer", f"answer {i}"), finish_reason="stop", prompt_tokens=5, completion_tokens=3,
                latency_ms=12.5, mean_logprob=-0.7, metadata=kw.pop("metadata", {}))
    return record(**{**base, **kw})


def test_wal_mode_and_schema_under_the_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_PIPELINE_HOME", str(tmp_path / "home"))
    store = CompletionStore()
    assert store.path == tmp_path / "home" / "traffic" / "completions.db"
    assert store.pragma("journal_mode") == "wal" and store.pragma("synchronous") == 1  # NORMAL
    assert CompletionStore(tmp_path / "full.db", synchronous="full").pragma("synchronous") == 2
    store.insert(rec(1, metadata={"user": "u1"}))
    got = store.get("chatcmpl-0001")
    assert got["messages"] == [{"role": "user", "content": "question 1"}] and got["metadata"] == {"user": "u1"}
    assert got["mean_logprob"] == -0.7 and got["review"] is None and got["requested"] is True
    with pytest.raises(NotFound):
        store.get("chatcmpl-nope")


def test_order_pagination_and_filters(tmp_path):
    store = CompletionStore(tmp_path / "c.db")
    for i in range(7):  # two per second: ties are broken by the order of storing
        store.insert(rec(i, created=1_700_000_000 + i // 2, metadata={"app": "a" if i % 2 else "b"},
                         version="2" if i == 6 else "1",
                         model="ft-pipeline-adapter/2" if i == 6 else "ft-pipeline-adapter"))
    ids = [f"chatcmpl-{i:04d}" for i in range(7)]
    page, more = store.list(limit=3)
    assert [r["id"] for r in page] == ids[:3] and more
    page, more = store.list(limit=3, after=ids[2])
    assert [r["id"] for r in page] == ids[3:6] and more
    page, more = store.list(limit=3, after=ids[5])
    assert [r["id"] for r in page] == ids[6:] and not more
    assert [r["id"] for r in store.list(order="desc", limit=100)[0]] == ids[::-1]
    assert [r["id"] for r in store.list(order="desc", after=ids[3])[0]] == ids[2::-1]
    assert [r["id"] for r in store.list(metadata={"app": "a"})[0]] == ids[1::2]
    assert store.list(metadata={"app": "a", "x": "y"})[0] == []
    # the id the client asked for, or NAME/VERSION of the version that answered
    assert [r["id"] for r in store.list(model="ft-pipeline-adapter/2")[0]] == [ids[6]]
    assert [r["id"] for r in store.list(model="ft-pipeline-adapter/1")[0]] == ids[:6]
    with pytest.raises(NotFound):
        store.list(after="chatcmpl-gone")


def test_metadata_limits_are_openais():
    assert check_metadata(None) == {} and check_metadata({"k" * 64: "v" * 512}) == {"k" * 64: "v" * 512}
    for bad, param in [({f"k{i}": "v" for i in range(17)}, "metadata"), ({"k" * 65: "v"}, "metadata"),
                       ({"k": "v" * 513}, "metadata.k"), ({"k": 1}, "metadata.k"), (["k"], "metadata")]:
        with pytest.raises(MetadataError) as e:
            check_metadata(bad)
        assert e.value.param == param


def test_verdicts_from_metadata_and_from_a_reviewer(tmp_path):
    assert verdict_from_metadata({"app": "x"}) is None
    assert verdict_from_metadata({"review": "accepted"}) == ("accepted", None)
    assert verdict_from_metadata({"review": "rejected", "correction": "mail a@b.com"}) == ("corrected",
                                                                                            "mail [EMAIL]")
    with pytest.raises(MetadataError):
        verdict_from_metadata({"review": "great"})
    store = CompletionStore(tmp_path / "c.db")
    store.insert(rec(1))
    store.insert(rec(2, metadata={"review": "accepted", "reviewer": "app"}))
    assert store.get("chatcmpl-0002")["review"] == "accepted" and store.get("chatcmpl-0002")["reviewer"] == "app"
    assert [r["id"] for r in store.list(unreviewed=True)[0]] == ["chatcmpl-0001"]
    got = store.update_metadata("chatcmpl-0001", {"correction": "x"}, ("corrected", "call +1 415 555 0100"))
    assert got["review"] == "corrected" and got["correction"] == "call [PHONE]" and got["reviewer"] == "api"
    assert abs(got["reviewed_at"] - time.time()) < 5 and got["metadata"] == {"correction": "x"}
    got = store.set_verdict("chatcmpl-0001", "rejected", None, "ana")
    assert (got["review"], got["correction"], got["reviewer"]) == ("rejected", None, "ana")
    assert got["metadata"]["review"] == "rejected"  # so that metadata[review]=rejected lists it
    with pytest.raises(ValueError):
        store.set_verdict("chatcmpl-0001", "corrected", None, "ana")  # no correction recorded before
    with pytest.raises(NotFound):
        store.update_metadata("chatcmpl-nope", {}, None)


def test_redaction_at_capture_is_counted():
    r = rec(1, messages=[{"role": "user", "content": "I am jo@example.com, call +1 415 555 0100"}],
            answer="Sure jo@example.com")
    assert r["messages"][0]["content"] == "I am [EMAIL], call [PHONE]" and r["answer"] == "Sure [EMAIL]"
    assert r["redactions"] == {"EMAIL": 2, "PHONE": 1}


def test_retention_deletes_old_completions(tmp_path):
    path = tmp_path / "c.db"
    store = CompletionStore(path)
    now = int(time.time())
    store.insert(rec(1, created=now - 40 * 86400))
    store.insert(rec(2, created=now - 10 * 86400))
    store.close()
    store = CompletionStore(path, retention_days=30)  # purged on open
    assert [r["id"] for r in store.list()[0]] == ["chatcmpl-0002"]
    assert store.purge(now=now + 25 * 86400) == 1 and store.count() == 0


def test_a_deleted_completion_leaves_no_text_in_the_files(tmp_path):
    path = tmp_path / "c.db"
    store = CompletionStore(path)
    store.insert(rec(1, answer="SECRET-ANSWER-XYZ"))
    store.insert(rec(2))
    store.delete("chatcmpl-0001")
    with pytest.raises(NotFound):
        store.delete("chatcmpl-0001")
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"SECRET-ANSWER-XYZ" not in data and b"question 1" not in data
    assert store.get("chatcmpl-0002")["answer"] == "answer 2"


def _writer(path: str, n: int) -> None:
    store = CompletionStore(path)
    for i in range(n):
        store.insert(rec(i))


def test_a_reader_sees_consistent_snapshots_while_another_process_writes(tmp_path):
    path = tmp_path / "c.db"
    CompletionStore(path)
    n = 300
    proc = mp.get_context("spawn").Process(target=_writer, args=(str(path), n))
    proc.start()
    reader, seen = CompletionStore(path), []
    while proc.is_alive() or not seen or seen[-1] < n:
        rows, _ = reader.list(limit=100, order="desc")
        count = reader.count()
        seen.append(count)
        assert all(json.loads(json.dumps(r["messages"])) for r in rows)  # every row readable, never half-written
        if not proc.is_alive() and count == n:
            break
    proc.join()
    assert proc.exitcode == 0 and seen == sorted(seen) and seen[-1] == n


def test_a_killed_writer_leaves_every_committed_row(tmp_path):
    """A process that dies between commits (os._exit: no cleanup, like SIGKILL) loses nothing it committed, and
    the next open recovers the log."""
    path = tmp_path / "c.db"
    proc = mp.get_context("spawn").Process(target=_write_then_die, args=(str(path), 50))
    proc.start()
    proc.join()
    assert proc.exitcode == 3
    assert (tmp_path / "c.db-wal").exists()  # the commits are still in the log, not checkpointed
    assert CompletionStore(path).count() == 50
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _write_then_die(path: str, n: int) -> None:
    import os

    store = CompletionStore(path)
    for i in range(n):
        store.insert(rec(i))
    db = store._conn()
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM completions")  # a transaction in flight when the process dies: rolled back
    os._exit(3)


def test_verdicts_become_a_drop_and_preference_pairs_with_lineage(tmp_path):
    from ft_pipeline.data.drop_files import find_drops
    from ft_pipeline.data.formats import detect_format, read_drop, to_messages
    from ft_pipeline.traffic.reviewed import write_drop

    store = CompletionStore(tmp_path / "c.db")
    for i in range(4):
        store.insert(rec(i, version=str(i + 1)))
    store.set_verdict("chatcmpl-0000", "accepted", None, "ana")
    store.set_verdict("chatcmpl-0001", "corrected", "better answer", "ana")
    store.set_verdict("chatcmpl-0002", "rejected", None, "bo")
    now = int(time.time())
    done = store.reviewed(now - 60, now + 60)
    assert [c["id"] for c in done] == ["chatcmpl-0000", "chatcmpl-0001", "chatcmpl-0002"]
    out = write_drop(done, "2026-05-20", tmp_path / "raw")
    assert (out["sft_rows"], out["preference_pairs"], out["rejected"]) == (2, 1, 1)
    sft = [json.loads(line) for line in (tmp_path / "raw" / "2026-05-20-reviewed_traffic.jsonl").open()]
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": "answer 0"}
    assert sft[1]["messages"][-1]["content"] == "better answer"
    assert (sft[1]["completion_id"], sft[1]["version"], sft[1]["review"]) == ("chatcmpl-0001", "2", "corrected")
    pair = json.loads((tmp_path / "raw" / "preferences" / "2026-05-20-reviewed_traffic.jsonl").read_text())
    assert pair["chosen"][0]["content"] == "better answer" and pair["rejected"][0]["content"] == "answer 1"
    assert pair["completion_id"] == "chatcmpl-0001"
    from ft_pipeline.preference.pair_formats import row_format, to_pair

    assert to_pair(pair, row_format(pair))["chosen"][0]["content"] == "better answer"  # the preference layer's form
    # the data layer takes it as any chat drop: found in the raw folder, read, detected, converted
    assert list(find_drops(tmp_path / "raw")[0]) == ["2026-05-20-reviewed_traffic.jsonl"]
    parsed = read_drop(tmp_path / "raw" / "2026-05-20-reviewed_traffic.jsonl")
    assert detect_format(parsed.rows) == "openai_chat"
    assert to_messages(parsed.rows[1].data, "openai_chat")[-1]["content"] == "better answer"


def test_metadata_values_are_redacted_and_counted_at_capture_and_on_update(tmp_path):
    """A metadata value is user text (a correction, a comment): redacted with the data layer's rules, as the
    messages are, and counted with them; on an update too, where the counts add to the capture's."""
    r = rec(1, metadata={"note": "customer jo@example.com", "correction": "Call +1 415 555 0100 instead."})
    assert r["metadata"] == {"note": "customer [EMAIL]", "correction": "Call [PHONE] instead."}
    assert (r["review"], r["correction"]) == ("corrected", "Call [PHONE] instead.")
    assert r["redactions"] == {"EMAIL": 1, "PHONE": 1}
    store = CompletionStore(tmp_path / "c.db")
    store.insert(r)
    got = store.update_metadata("chatcmpl-0001", {"correction": "Mail bo@example.com", "via": "bo@example.com"},
                                verdict_from_metadata({"correction": "Mail bo@example.com"}))
    assert got["metadata"] == {"correction": "Mail [EMAIL]", "via": "[EMAIL]"}
    assert got["correction"] == "Mail [EMAIL]" and got["redactions"] == {"EMAIL": 3, "PHONE": 1}
    assert b"example.com" not in b"".join(p.read_bytes() for p in tmp_path.glob("c.db*"))
