"""Forget one row of a demo drop through the real CLI, Dagster instance and MLflow store (builtin:tiny, the
smoke preset), then run the pipeline again: no file under the home holds the row's text, every drop reconciles,
the new champion was not trained on it, and `forget --status` names the old version that still was."""

import json
from pathlib import Path

import pytest

from ft_pipeline_tests.test_end_to_end import run_cli, warm_preset

pytestmark = pytest.mark.slow


def _files_holding(root: Path, needle: str) -> list[str]:
    data = needle.encode()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and data in p.read_bytes())


def _unique_train_row(home: Path) -> tuple[dict, str]:
    """A training row whose user text is plain ASCII, long, and in no other cleaned row."""
    cleaned = "".join(p.read_text() for p in (home / "data" / "cleaned").glob("*.jsonl"))
    for line in (home / "data" / "split" / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        text = rec["messages"][-2]["content"]
        if len(text) > 40 and text.isascii() and '"' not in text and "\\" not in text and cleaned.count(text) == 1:
            return rec, text
    raise AssertionError("no training row with a unique user text")


def _unique_pair(home: Path) -> tuple[dict, str]:
    """A training preference pair whose prompt is plain ASCII, long, and in no cleaned row or other pair."""
    cleaned = "".join(p.read_text() for p in (home / "data" / "cleaned").glob("*.jsonl"))
    pairs = (home / "data" / "preference_pairs" / "train.jsonl").read_text()
    for line in pairs.splitlines():
        rec = json.loads(line)
        text = rec["prompt"][-1]["content"]
        if len(text) > 40 and text.isascii() and '"' not in text and "\\" not in text and text not in cleaned \
                and pairs.count(text) == 1:
            return rec, text
    raise AssertionError("no preference pair with a unique prompt")


@pytest.fixture(scope="module")
def forgotten(smoke_home):
    tmp, env, first = smoke_home()  # a smoke run on a copy of the demo drops, in a folder of this module's own
    home = tmp / "home"
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rec, text = _unique_train_row(home)
    assert _files_holding(home, text), "the row's text should be under the home before the request"
    drop_file = json.loads((home / "data" / "split" / "manifest.json").read_text())["drop_files"][rec["drop"]]
    forget = run_cli(env, "forget", "--drop", drop_file, "--line", str(rec["line"]), "--reason", "test")
    assert forget.returncode == 0, forget.stderr[-3000:]
    before = {"status": run_cli(env, "forget", "--status"),
              "trained_on": run_cli(env, "trained-on", "--drop", drop_file, "--line", str(rec["line"]))}
    pair, pair_text = _unique_pair(home)  # and a row of the preference drop, by its file name and line
    assert _files_holding(home, pair_text)
    pair_file = (pair["drop"] if "." in pair["drop"]
                 else next((tmp / "raw" / "preferences").glob(f"{pair['drop']}.*")).name)
    forget_pair = run_cli(env, "forget", "--drop", pair_file, "--line", str(pair["line"]), "--reason", "pair")
    assert forget_pair.returncode == 0 and f"preferences/{pair_file} line {pair['line']}" in forget_pair.stdout, (
        forget_pair.stdout + forget_pair.stderr[-3000:])
    # with warm starts on: the champion holds the erased row, so the retrain must start from the base
    second = run_cli(env, "run", "--preset", str(warm_preset(tmp, 3)))
    return tmp, env, rec, text, forget, before, second, pair_text


def test_forget_records_the_request_without_the_text(forgotten):
    tmp, env, rec, text, forget, before, *_ = forgotten
    assert "versions trained on it: 1" in forget.stdout
    assert "Downloading artifacts" not in forget.stdout + forget.stderr  # one line per fact, no progress bars
    req, pair_req = [json.loads(x) for x in (tmp / "home" / "erasure" / "requests.jsonl").read_text().splitlines()]
    assert req["rows"][0]["raw_sha256"] == rec["raw_sha256"] and req["reason"] == "test"
    assert pair_req["rows"][0]["drop"].startswith("preferences/") and pair_req["reason"] == "pair"
    # before retraining: the champion is still trained on it, and both commands say so
    assert '"aliases": ["champion"]' in before["trained_on"].stdout
    (st,) = [json.loads(x) for x in before["status"].stdout.splitlines()]  # asked before the pair's request
    assert st["versions_containing"] == [{"version": "1", "aliases": ["champion"]}]


def test_the_next_run_retrains_and_leaves_no_trace(forgotten):
    tmp, env, rec, text, _, _, second, pair_text = forgotten
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "version 2 (SFT; alias champion; previous champion: 1)" in second.stdout
    request_id = json.loads((tmp / "home" / "erasure" / "requests.jsonl").read_text().splitlines()[0])["id"]
    assert f"no warm start: the champion (version 1) was trained on rows erased by {request_id}" in second.stdout
    assert json.loads((tmp / "home" / "models" / "adapter.json").read_text())["global_step"] == 10  # smoke's
    assert _files_holding(tmp / "home", text) == []  # data, split, caches, reports, MLflow and Dagster stores
    assert _files_holding(tmp / "home", pair_text) == []  # the preference pairs too
    pairs = json.loads((tmp / "home" / "data" / "preference_pairs" / "manifest.json").read_text())["drops"]
    assert sum(d["erased"] for d in pairs.values()) == 1
    assert all(d["rows_in"] == d["kept"] + d["quarantined"] + d["duplicates"] + d["erased"] for d in pairs.values())
    for stats_path in (tmp / "home" / "data" / "cleaned").glob("*.stats.json"):
        s = json.loads(stats_path.read_text())
        assert s["rows_in"] == s["kept"] + s["quarantined"] + s["duplicates"] + s["erased"], stats_path.name
    stats = json.loads((tmp / "home" / "data" / "cleaned" / f"{rec['drop']}.stats.json").read_text())
    assert stats["erased"] == 1
    lineage = run_cli(env, "lineage", "--version", "champion")
    assert lineage.returncode == 0 and "version 2" in lineage.stderr
    assert rec["raw_sha256"] not in lineage.stdout


def test_status_names_the_old_version_and_the_clean_one(forgotten):
    tmp, env, *_ = forgotten
    out = run_cli(env, "forget", "--status")
    assert out.returncode == 0, out.stderr[-2000:]
    st, pair_st = [json.loads(x) for x in out.stdout.splitlines()]
    assert st["versions_containing"] == [{"version": "1", "aliases": []}] and st["clean_versions"] == ["2"]
    assert {"version": "2"} not in [{"version": v["version"]} for v in pair_st["versions_containing"]]
    assert "delete_model_version('ft-pipeline-adapter', '1')" in out.stderr


def test_forgetting_a_row_that_does_not_exist_is_one_line(forgotten):
    tmp, env, *_ = forgotten
    out = run_cli(env, "forget", "--drop", "2026-03-tickets.csv", "--line", "999999")
    assert out.returncode == 2 and out.stderr == "forget: drop 2026-03-tickets.csv has no line 999999\n"


def test_the_versions_carry_their_erasure_tags(forgotten):
    import mlflow

    tmp, _, _, _, forget, *_ = forgotten
    ids = [json.loads(x)["id"] for x in (tmp / "home" / "erasure" / "requests.jsonl").read_text().splitlines()]
    request_id = ids[0]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'home' / 'mlflow' / 'mlflow.db'}")
    v1, v2 = (client.get_model_version("ft-pipeline-adapter", v).tags for v in ("1", "2"))
    # version 1 holds the SFT row (and the pair too if DPO made it); version 2 was trained after both requests
    assert v1["erasure.superseded"].split(",")[0] == request_id and "erasure.pending" not in v1
    assert v2["erasure.clean_of"].split(",") == ids and "erasure.pending" not in v2
    runs = client.search_runs([client.get_experiment_by_name("ft_pipeline").experiment_id],
                              f"tags.`ft_pipeline.erasure_request` = '{request_id}'")
    assert len(runs) == 1 and runs[0].info.run_name == f"forget-{request_id}"
