"""Erasure requests on tiny drops (erasure/requests.py, `ft-pipeline forget`): rows are found by line, hash or text,
the request holds no text, cleaning counts erased rows on their own, the data version moves, and the
registry tags say which versions were trained on an erased row (a real MLflow SQLite store in tmp_path)."""

import json

import mlflow
import pytest

from ft_pipeline.cli.main import main
from ft_pipeline.data import cleaning, formats
from ft_pipeline.data.erased import MARKER, mark_erased
from ft_pipeline.erasure import registry as erasure_registry
from ft_pipeline.erasure import requests as erasure
from ft_pipeline.registry import versions as registry


def _row(user, answer):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


ROWS = [_row("my parcel from Zork never came", '{"intent": "missing"}'),
        _row("refund my blender please", '{"intent": "refund"}'),
        _row("the blender arrived broken", '{"intent": "damaged"}'),
        _row("hello, what are your hours?", '{"intent": "other"}')]


@pytest.fixture
def pipeline_dirs(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "d1.jsonl").write_text("\n".join(ROWS) + "\n")
    monkeypatch.setenv("FT_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FT_PIPELINE_RAW_DIR", str(raw))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path / "home", raw


def _canonical(raw, erased):
    parsed = formats.read_drop(raw / "d1.jsonl")
    return list(mark_erased(cleaning.iter_canonical(parsed, "openai_chat"), erased))


def test_find_rows_by_line_hash_and_text(pipeline_dirs):
    _, raw = pipeline_dirs
    by_line = erasure.find_rows(raw, "d1.jsonl", 2)
    assert [(r["line"], r["drop"]) for r in by_line] == [(2, "d1.jsonl")] and "texts" not in by_line[0]
    assert erasure.find_rows(raw, raw_sha256=by_line[0]["raw_sha256"][:12]) == by_line
    (raw / "broken.json").write_text('[{"instruction": ')
    unreadable = []
    assert [r["line"] for r in erasure.find_rows(raw, text="blender", unreadable=unreadable)] == [2, 3]
    assert len(unreadable) == 1 and "broken.json" in unreadable[0]
    with pytest.raises(erasure.ErasureError, match="broken.json"):
        erasure.find_rows(raw, "broken.json", 1)
    whole = erasure.find_rows(raw, "d1.jsonl", whole_drop=True)  # a deleted fine-tuning file: every row of it
    assert [r["line"] for r in whole] == [1, 2, 3, 4] and {r["drop"] for r in whole} == {"d1.jsonl"}
    with pytest.raises(erasure.ErasureError, match="name the row"):  # a drop alone is not every row of it
        erasure.find_rows(raw, "d1.jsonl")
    for kwargs, msg in [({"drop": "d1.jsonl", "line": 9}, "drop d1.jsonl has no line 9"),
                        ({"drop": "nope.jsonl", "line": 1}, "no drop 'nope.jsonl'"),
                        ({"text": "toaster"}, "no raw row matches text 'toaster'"),
                        ({"raw_sha256": "ffff0000"}, "no raw row matches raw-sha256 ffff0000")]:
        with pytest.raises(erasure.ErasureError, match=msg):
            erasure.find_rows(raw, **kwargs)


def test_erased_rows_lose_their_text_and_are_counted_on_their_own(pipeline_dirs):
    home, raw = pipeline_dirs
    rows = erasure.find_rows(raw, "d1.jsonl", 1)
    request = erasure.new_request(rows, "asked by the customer")
    assert "Zork" not in json.dumps(request) and request["rows"][0]["raw_sha256"] == rows[0]["raw_sha256"]
    erasure.append_request(home, request)
    erased = erasure.erased_hashes(home)
    records = _canonical(raw, erased)
    assert records[0] == {"drop": "d1.jsonl", "line": 1, "format": "openai_chat",
                          "raw_sha256": rows[0]["raw_sha256"], "erased": request["id"]}
    out = cleaning.clean_records(records, cleaning.CleaningOptions(near_dup=None))
    s = out.stats()
    assert (s["rows_in"], s["kept"], s["quarantined"], s["duplicates"], s["erased"]) == (4, 3, 0, 0, 1)
    assert out.erased == [{"drop": "d1.jsonl", "line": 1, "raw_sha256": rows[0]["raw_sha256"],
                           "request": request["id"]}]
    assert "Zork" not in json.dumps(out.kept)
    sha = formats.sha256_file(raw / "d1.jsonl")
    assert erasure.raw_data_version(sha, {}) == sha[:16] != erasure.raw_data_version(sha, erased)
    assert erasure.cleaned_data_version("ab" * 32, out.erased) != erasure.cleaned_data_version("ab" * 32, [])


def test_a_redacted_source_line_is_erased_too(pipeline_dirs):
    home, raw = pipeline_dirs
    rows = erasure.find_rows(raw, "d1.jsonl", 3)
    request = erasure.new_request(rows, redacted_source=True)
    erasure.redact_source(raw, rows, request)
    lines = (raw / "d1.jsonl").read_text().splitlines()
    assert "blender arrived" not in lines[2] and json.loads(lines[2])[MARKER] == request["id"]
    assert lines[:2] + lines[3:] == ROWS[:2] + ROWS[3:]
    assert _canonical(raw, {})[2]["erased"] == request["id"]  # no request file needed: the line says so


def test_scrub_removes_derived_lines_cache_entries_and_report_text(pipeline_dirs):
    home, raw = pipeline_dirs
    records = [r for r in _canonical(raw, {})]
    kept = cleaning.clean_records(records, cleaning.CleaningOptions(near_dup=None)).kept
    (home / "data" / "cleaned").mkdir(parents=True)
    (home / "data" / "cleaned" / "d1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    cache = home / "cache" / "eval"
    cache.mkdir(parents=True)
    keys = [erasure.eval_cache.example_key(r) for r in kept]
    (cache / "m.jsonl").write_text("".join(json.dumps({"key": k, "prediction": "x"}) + "\n" for k in keys))
    (home / "reports").mkdir()
    (home / "reports" / "evaluation.md").write_text(f"| {kept[1]['messages'][0]['content']} | ok |")
    erased = {kept[1]["raw_sha256"]: "erase-1"}
    (home / "data" / "erased").mkdir()
    (home / "data" / "erased" / "d1.jsonl").write_text(json.dumps({"raw_sha256": kept[1]["raw_sha256"]}) + "\n")
    assert erasure.scrub(home, erased) == {"data_lines": 1, "cache_entries": 1, "reports": 1}
    assert "refund my blender" not in (home / "data" / "cleaned" / "d1.jsonl").read_text()
    assert (home / "data" / "erased" / "d1.jsonl").read_text().count("\n") == 1  # no text there: kept
    assert [json.loads(x)["key"] for x in (cache / "m.jsonl").read_text().splitlines()] == keys[:1] + keys[2:]
    assert (home / "reports" / "evaluation.md").read_text() == "| [erased] | ok |"


def test_forget_cli_errors_and_lists_every_text_match(pipeline_dirs, capsys, monkeypatch):
    home, raw = pipeline_dirs
    assert main(["forget", "--drop", "d1.jsonl", "--line", "42"]) == 2
    err = capsys.readouterr().err
    assert err == "forget: drop d1.jsonl has no line 42\n"
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    assert main(["forget", "--text", "blender"]) == 1
    out = capsys.readouterr().out
    assert "d1.jsonl line 2" in out and "d1.jsonl line 3" in out and not erasure.requests_path(home).exists()
    assert main(["forget", "--text", "blender", "--yes", "--reason", "gdpr"]) == 0
    assert "erasure request erase-" in capsys.readouterr().out
    (req,) = erasure.load_requests(home)
    assert [r["line"] for r in req["rows"]] == [2, 3] and req["reason"] == "gdpr"
    assert "blender" not in erasure.requests_path(home).read_text()
    runs = mlflow.search_runs(experiment_names=["ft_pipeline"], output_format="list")
    assert [r.data.tags["ft_pipeline.erasure_request"] for r in runs] == [req["id"]]


PAIRS = [json.dumps({"prompt": "my Zork blender never came", "chosen": '{"intent": "missing"}',
                     "rejected": '{"intent": "refund"}'}),
         json.dumps({"prompt": "cancel order 77", "chosen": '{"intent": "cancel"}',
                     "rejected": '{"intent": "refund"}'})]


def test_a_preference_row_is_found_erased_from_its_pairs_and_scrubbed(pipeline_dirs, capsys):
    from ft_pipeline.preference.pairs import build_pairs

    home, raw = pipeline_dirs
    (raw / "preferences").mkdir()
    (raw / "preferences" / "p1.jsonl").write_text("\n".join(PAIRS) + "\n")
    (hit,) = erasure.find_rows(raw, "p1.jsonl", 1)
    assert (hit["drop"], hit["file"], hit["line"]) == ("preferences/p1.jsonl", "preferences/p1.jsonl", 1)
    assert erasure.find_rows(raw, "preferences/p1.jsonl", 1) == [hit]
    assert [(r["drop"], r["line"]) for r in erasure.find_rows(raw, text="Zork")] == [
        ("d1.jsonl", 1), ("preferences/p1.jsonl", 1)]  # the search covers both kinds of drop
    build_pairs(raw / "preferences", home / "data" / "preference_pairs")  # what the pipeline holds before
    assert main(["forget", "--drop", "p1.jsonl", "--line", "1", "--redact-source"]) == 0
    assert "preferences/p1.jsonl line 1" in capsys.readouterr().out
    pairs_dir = home / "data" / "preference_pairs"
    assert not [p.name for p in pairs_dir.glob("*.jsonl") if "Zork" in p.read_text()]  # scrubbed at once
    assert "Zork" not in (raw / "preferences" / "p1.jsonl").read_text()
    assert (raw / "preferences" / "p1.jsonl").read_text().splitlines()[1] == PAIRS[1]
    erased = erasure.erased_hashes(home)
    assert list(erased) == [hit["raw_sha256"]]
    d = build_pairs(raw / "preferences", pairs_dir, erased=erased)["drops"]["p1.jsonl"]
    assert (d["rows_in"], d["kept"], d["erased"]) == (2, 1, 1)
    # an erasure request changes what preference_pairs is made from, so the next run re-reads the pairs
    from ft_pipeline.defs.preference import source_version

    assert source_version(raw / "preferences", erased) != source_version(raw / "preferences")


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, model_input, params=None):
        return model_input


def _version(name, rows):
    with mlflow.start_run() as run:
        registry.log_lineage(rows)
        info = mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=[])
    return registry.register(info.model_uri, name, run.info.run_id, {})[0].version


def test_registry_tags_and_status_follow_the_request(pipeline_dirs):
    home, raw = pipeline_dirs
    mlflow.set_tracking_uri(f"sqlite:///{home.parent / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", (home.parent / "art").as_uri()))
    rows = erasure.find_rows(raw, "d1.jsonl", 1) + erasure.find_rows(raw, "d1.jsonl", 2)
    lineage = [{"drop": r["drop"], "line": r["line"], "raw_sha256": r["raw_sha256"], "id": str(i)}
               for i, r in enumerate(rows)]
    _version("m", lineage)
    registry.set_champion("m", "1")
    req = erasure.new_request(rows[:1])
    req["created"] = "2000-01-01T00:00:00+00:00"  # before any version: a version registered since counts
    erasure_registry.refresh_tags("m", [req])
    client = mlflow.MlflowClient()
    assert client.get_model_version("m", "1").tags[erasure_registry.PENDING] == req["id"]
    (st,) = erasure_registry.status("m", [req])
    assert st["versions_containing"] == [{"version": "1", "aliases": ["champion"]}] and st["clean_versions"] == []
    _version("m", lineage[1:])  # trained without the erased row
    erasure_registry.refresh_tags("m", [req])
    v1, v2 = client.get_model_version("m", "1").tags, client.get_model_version("m", "2").tags
    assert erasure_registry.PENDING not in v1 and v1[erasure_registry.SUPERSEDED] == req["id"]
    assert v2[erasure_registry.CLEAN_OF] == req["id"] and erasure_registry.PENDING not in v2
    assert erasure_registry.status("m", [req])[0]["clean_versions"] == ["2"]


def _gate(tmp_path, champion_erasure_pending):
    from ft_pipeline.defs.evaluation import GateConfig, beats_base_and_champion
    from ft_pipeline.resources import PipelineHome

    m = lambda fa: dict(json_valid=1.0, field_accuracy=fa, exact_match=fa, chrf=50.0, rouge_l=fa)  # noqa: E731
    report = {"metrics": {"base": m(0.1), "tuned": m(0.6), "champion": m(0.8)}, "champion_version": "1",
              "retention_kl": None, "champion_erasure_pending": champion_erasure_pending}
    (tmp_path / "reports").mkdir(exist_ok=True)
    (tmp_path / "reports" / "evaluation.json").write_text(json.dumps(report))
    import dagster as dg

    home = PipelineHome(home=str(tmp_path), raw_dir=str(tmp_path))
    return beats_base_and_champion(dg.build_asset_check_context(), config=GateConfig(), home=home)


def test_the_gate_does_not_hold_to_a_champion_trained_on_an_erased_row(tmp_path):
    assert not _gate(tmp_path, None).passed  # below the champion: no
    erased = _gate(tmp_path, "erase-1")
    assert erased.passed and "trained on rows erased by erase-1: not compared" in erased.description


def test_evaluation_artifacts_in_mlflow_are_replaced_by_scrubbed_copies(pipeline_dirs):
    home, _ = pipeline_dirs
    mlflow.set_tracking_uri(f"sqlite:///{home.parent / 'mlflow.db'}")
    exp = mlflow.create_experiment("scrub", (home.parent / "art").as_uri())
    text = "refund my blender please, it is broken"
    with mlflow.start_run(experiment_id=exp, tags={"dagster.asset_key": "evaluation_report"}) as run:
        mlflow.log_text(f"| {text} | x |", "evaluation.md")
        mlflow.log_table({"prompt": [text, "other prompt"], "tuned": ["a", "b"]}, "samples.json")
    with mlflow.start_run(experiment_id=exp, tags={"dagster.asset_key": "train_set"}):
        mlflow.log_text(text, "evaluation.md")  # not an evaluation run: left alone
    found = erasure.needles([{"messages": [{"role": "user", "content": text}]}])
    replaced = erasure_registry.scrub_artifacts(exp, found)
    assert sorted(replaced) == [f"{run.info.run_id}/evaluation.md", f"{run.info.run_id}/samples.json"]
    for path in ("evaluation.md", "samples.json"):
        got = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{path}")
        assert "blender" not in got and "[erased]" in got
    assert "other prompt" in mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/samples.json")
