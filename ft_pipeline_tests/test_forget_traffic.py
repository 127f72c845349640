"""`ft-pipeline forget` reaches the stored completions (issue 31): a completion named by id goes with every row
made from it, a forgotten row of a reviewed_traffic drop takes its stored completion with it, and --text finds
stored completions too."""

import json

import pytest

from ft_pipeline.cli.main import main
from ft_pipeline.erasure import requests as erasure
from ft_pipeline.traffic.reviewed import write_drop
from ft_pipeline.traffic.store import CompletionStore, NotFound, db_path
from ft_pipeline_tests.test_reviewed_traffic import DAY, rec

DROP = f"{DAY}-reviewed_traffic.jsonl"


@pytest.fixture
def traffic(tmp_path, monkeypatch):
    raw, home = tmp_path / "raw", tmp_path / "home"
    raw.mkdir()
    monkeypatch.setenv("FT_PIPELINE_HOME", str(home))
    monkeypatch.setenv("FT_PIPELINE_RAW_DIR", str(raw))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = CompletionStore(db_path(home))
    for i in range(4):
        store.insert(rec(i))
    store.set_verdict("chatcmpl-0000", "accepted", None, "ana")
    store.set_verdict("chatcmpl-0001", "corrected", "Order 1 ships on Monday.", "ana")
    write_drop(store.reviewed(0, 2**40), DAY, raw)
    store.close()
    return home, raw


def _ids(home):
    store = CompletionStore(db_path(home))
    try:
        return [c["id"] for c in store.list(limit=100)[0]]
    finally:
        store.close()


def test_a_completion_id_erases_the_completion_and_every_row_made_from_it(traffic, capsys):
    home, raw = traffic
    assert main(["forget", "--completion-id", "chatcmpl-0001", "--reason", "user asked"]) == 0
    out = capsys.readouterr().out
    assert f"{DROP} line 2" in out and f"preferences/{DROP} line 1" in out and "deleted 1 stored completion" in out
    assert _ids(home) == ["chatcmpl-0000", "chatcmpl-0002", "chatcmpl-0003"]
    (req,) = erasure.load_requests(home)
    assert req["completions"] == ["chatcmpl-0001"]
    assert sorted((r["drop"], r["line"]) for r in req["rows"]) == [(DROP, 2), (f"preferences/{DROP}", 1)]
    # the pipeline's own drop files lose the text at once; the other row stays as it was
    lines = (raw / DROP).read_text().splitlines()
    assert "Order 1" not in (raw / DROP).read_text() and json.loads(lines[0])["completion_id"] == "chatcmpl-0000"
    assert "Order 1" not in (raw / "preferences" / DROP).read_text()


def test_forgetting_a_reviewed_row_deletes_its_stored_completion(traffic, capsys):
    home, raw = traffic
    assert main(["forget", "--drop", DROP, "--line", "1"]) == 0
    assert "deleted 1 stored completion" in capsys.readouterr().out
    assert _ids(home) == ["chatcmpl-0001", "chatcmpl-0002", "chatcmpl-0003"]
    with pytest.raises(NotFound):
        CompletionStore(db_path(home)).get("chatcmpl-0000")


def test_text_and_ids_reach_completions_without_a_verdict(traffic, capsys):
    home, _ = traffic
    assert main(["forget", "--text", "order number 3", "--yes"]) == 0  # stored only: no raw row has it
    assert "stored completion chatcmpl-0003" in capsys.readouterr().out
    assert main(["forget", "--completion-id", "chatcmpl-0002"]) == 0
    assert _ids(home) == ["chatcmpl-0000", "chatcmpl-0001"]
    assert [r.get("completions") for r in erasure.load_requests(home)] == [["chatcmpl-0003"], ["chatcmpl-0002"]]
    assert main(["forget", "--completion-id", "chatcmpl-nope"]) == 2
    assert "no stored completion chatcmpl-nope" in capsys.readouterr().err
