"""The data assets on the demo drops, materialized into tmp_path: the split measures token lengths with the
base model's tokenizer, quarantines (or fails on) what is too long, accounts for every row, shows a histogram,
and its blocking check recomputes near-duplicates across the split and fails on a split that leaks."""

import base64
import json
import shutil

import dagster as dg
import pytest

from ft_pipeline.data.drop_files import find_drops
from ft_pipeline.defs import data, model
from ft_pipeline.resources import MlflowTracking, PipelineHome
from ft_pipeline.settings import REPO_ROOT


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data_assets")
    shutil.copytree(REPO_ROOT / "data" / "raw", tmp / "raw")
    resources = {"home": PipelineHome(home=str(tmp / "home"), raw_dir=str(tmp / "raw")),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                                   artifact_root=str(tmp / "artifacts"))}
    instance = dg.DagsterInstance.ephemeral()
    drops = sorted(find_drops(tmp / "raw")[0])
    instance.add_dynamic_partitions("drops", drops)
    for drop in drops:
        assert dg.materialize([data.raw_examples, data.cleaned_examples], partition_key=drop, instance=instance,
                              resources=resources).success
    assert dg.materialize([model.base_model], instance=instance, resources=resources).success
    return tmp, instance, resources


def test_cleaning_a_drop_in_worker_processes_inside_a_dagster_step_writes_the_same_files(env, tmp_path,
                                                                                       monkeypatch):
    """A drop of more than one chunk is cleaned by a pool of worker processes started from the Dagster step
    (spawned: a step's process has threads); with 100-row chunks the demo drop takes that path, and its files
    are byte for byte those of the one-chunk run above."""
    from ft_pipeline.data import cleaning

    tmp, instance, _ = env
    drop = sorted(find_drops(tmp / "raw")[0])[0]
    monkeypatch.setattr(cleaning, "CHUNK_ROWS", 100)
    from concurrent.futures import ProcessPoolExecutor

    submitted = []
    submit = ProcessPoolExecutor.submit
    monkeypatch.setattr(ProcessPoolExecutor, "submit",
                        lambda pool, fn, *a, **k: submitted.append(fn.__name__) or submit(pool, fn, *a, **k))
    resources = {"home": PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp / "raw")),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                                   artifact_root=str(tmp_path / "artifacts"))}
    res = dg.materialize([data.raw_examples, data.cleaned_examples], partition_key=drop, instance=instance,
                         resources=resources)
    assert res.success and len(submitted) > 3 and set(submitted) == {"_prepare_chunk"}
    check = res.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["rows_in"].value > 300
    for kind in ("cleaned", "quarantine", "duplicates"):
        ours = (tmp_path / "home" / "data" / kind / f"{drop}.jsonl").read_bytes()
        assert ours == (tmp / "home" / "data" / kind / f"{drop}.jsonl").read_bytes(), kind


def split(env, **config):
    tmp, instance, resources = env
    return dg.materialize([data.train_holdout_split, data.no_near_duplicate_across_split], instance=instance,
                          resources=resources, raise_on_error=False,
                          run_config=dg.RunConfig(ops={"train_holdout_split": data.SplitConfig(**config)}))


def test_split_quarantines_too_long_rows_and_accounts_for_every_row(env):
    tmp = env[0]
    res = split(env, max_tokens=200, stratify_by="answer.intent")
    assert res.success
    out = tmp / "home" / "data" / "split"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_accounted_for"] is True
    assert manifest["rows_in"] == sum(len((tmp / "home" / "data" / "cleaned" / f"{d}.jsonl").read_text().splitlines())
                                      for d in manifest["drops"])
    too_long = [json.loads(line) for line in (out / "too_long.jsonl").read_text().splitlines()]
    assert len(too_long) == manifest["too_long"] > 0
    assert all(t["tokens"] > 200 and t["drop"] in manifest["drops"] and t["line"] > 0 and "200" in t["reason"]
               for t in too_long)
    train_ids = {json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()}
    assert not train_ids & {t["id"] for t in too_long}  # quarantined, not truncated into train
    assert set(manifest["strata"]) >= {"refund", "shipping_status"}
    md = res.asset_materializations_for_node("train_holdout_split")[0].metadata
    assert md["too_long"].value == manifest["too_long"] and md["tokens_max"].value > 200
    png = md["token_histogram"].value.split("base64,")[1].rstrip(")")
    assert base64.b64decode(png).startswith(b"\x89PNG")
    checks = res.get_asset_check_evaluations()
    assert {(c.asset_key.to_user_string(), c.passed) for c in checks} == {("train_set", True), ("holdout_set", True)}


def test_holdout_drops_make_a_drop_the_holdout_without_a_leak_and_an_unknown_one_fails_in_one_line(env):
    tmp = env[0]
    first, *rest = sorted(find_drops(tmp / "raw")[0])  # sorts first, merged last: its duplicates of train rows go
    res = split(env, holdout_drops=[first])
    assert res.success
    manifest = json.loads((tmp / "home" / "data" / "split" / "manifest.json").read_text())
    assert manifest["by_drop"]["holdout"] == {first: manifest["holdout"]} and manifest["holdout"] > 100
    assert set(manifest["by_drop"]["train"]) == set(rest) and manifest["holdout_drops"] == [first]
    checks = res.get_asset_check_evaluations()  # no near-duplicate across the split, recomputed from the files
    assert {(c.asset_key.to_user_string(), c.passed) for c in checks} == {("train_set", True), ("holdout_set", True)}
    res = split(env, holdout_drops=["nope.jsonl"])
    failure = next(e for e in res.all_events if e.is_step_failure).step_failure_data.user_failure_data.description
    assert not res.success and failure.startswith("holdout_drops names 'nope.jsonl', which is not among the drops")


def test_split_fails_naming_the_rows_when_told_to(env):
    res = split(env, max_tokens=200, on_too_long="fail")
    assert not res.success
    failure = next(e for e in res.all_events if e.is_step_failure).step_failure_data.user_failure_data.description
    assert "longer than max_tokens=200" in failure and " line " in failure and "tokens)" in failure


def test_near_dup_check_fails_on_a_leaking_split(env):
    tmp = env[0]
    assert split(env).success  # default max_tokens: nothing in the demo data is too long
    out = tmp / "home" / "data" / "split"
    assert json.loads((out / "manifest.json").read_text())["too_long"] == 0
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    victim = max(train, key=lambda r: len(r["messages"][-2]["content"]))
    twin = {**victim, "id": "leaked", "drop": "leak.jsonl", "line": 1,
            "messages": victim["messages"][:-2] + [{"role": "user",
                                                    "content": victim["messages"][-2]["content"] + " thx"},
                                                   victim["messages"][-1]]}
    with open(out / "holdout.jsonl", "a") as f:
        f.write(json.dumps(twin) + "\n")
    results = list(data.no_near_duplicate_across_split(dg.build_asset_check_context(), home=env[2]["home"]))
    assert [r.passed for r in results] == [False, False]
    assert f"holdout leak.jsonl line 1 ~ train {victim['drop']} line {victim['line']}" in results[0].description
    assert results[0].metadata["pairs"].value == 1


def test_raw_examples_names_the_encoding_of_a_latin1_export_and_reads_it_once_declared(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "export.csv").write_bytes("".join(["prompt,completion\n"] + [f'"Ma commande {i} est arrivée abîmée",'
                                              f'"Désolé {i}"\n' for i in range(10)]).encode("latin-1"))
    resources = {"home": PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                                   artifact_root=str(tmp_path / "artifacts"))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("drops", ["export.csv"])

        def run(**config):
            return dg.materialize([data.raw_examples], partition_key="export.csv", instance=instance,
                                  resources=resources, raise_on_error=False,
                                  run_config=dg.RunConfig(ops={"raw_examples": data.RawExamplesConfig(**config)}))

        failed = run()
        failure = next(e for e in failed.all_events if e.is_step_failure).step_failure_data.user_failure_data
        assert "not UTF-8, likely cp1252" in failure.description and "encoding: cp1252" in failure.description
        declared = run(encoding="cp1252")
        assert declared.success
        md = declared.asset_materializations_for_node("raw_examples")[0].metadata
        assert md["rows"].value == 10 and md["rows_not_converted"].value == 0
        records = [json.loads(line) for line in (tmp_path / "home" / "data" / "raw_examples" / "export.csv.jsonl")
                   .read_text(encoding="utf-8").splitlines()]
        assert records[0]["messages"][0]["content"] == "Ma commande 0 est arrivée abîmée"


def test_a_drop_with_a_real_export_name_is_ingested_under_its_derived_key(tmp_path):
    from ft_pipeline.data.drop_files import drop_key

    raw = tmp_path / "raw"
    raw.mkdir()
    name = "Support export (Nov 2026).csv"
    (raw / name).write_text("prompt,completion\nwhere is my order?,on its way\n")
    key = drop_key(name)
    resources = {"home": PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                                   artifact_root=str(tmp_path / "artifacts"))}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("drops", [key])
        res = dg.materialize([data.raw_examples, data.cleaned_examples], partition_key=key, instance=instance,
                             resources=resources)
    assert res.success
    md = res.asset_materializations_for_node("raw_examples")[0].metadata
    assert md["file_name"].value == name and md["file"].value == str(raw / name)  # the original name kept
    home = tmp_path / "home" / "data"
    assert json.loads((home / "raw_examples" / f"{key}.meta.json").read_text())["file_name"] == name
    assert [json.loads(line)["drop"] for line in (home / "cleaned" / f"{key}.jsonl").read_text().splitlines()] == [key]



def test_label_conflicts_warn_without_blocking_and_follow_the_knob(tmp_path):
    """One message answered two ways in a drop: the conflict checks warn (the runs succeed), its rows follow
    `conflicts` (quarantine in cleaning, latest in the split) and every row is accounted for. The newer drop
    adds "ASAP" (high), a contrast to the old rows, twice: the second time a duplicate."""
    msg = "The two-factor code isn't working and I can't reach my Aurora X2 headphones settings."

    def chat(user, urgency):
        answer = json.dumps({"intent": "account_access", "product": "Aurora X2 headphones", "order_id": None,
                             "urgency": urgency})
        return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "2026-01.jsonl").write_text("\n".join([chat(msg, "medium"), chat(msg, "low"),
                                                  chat("Where is my Nova e-reader?", "medium")]) + "\n")
    (raw / "2026-02.jsonl").write_text(chat(msg + " ASAP", "high") + "\n" + chat((msg + " asap").upper(), "high")
                                       + "\n")
    resources = {"home": PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw)),
                 "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                                                   artifact_root=str(tmp_path / "artifacts"))}
    home = tmp_path / "home" / "data"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("drops", ["2026-01.jsonl", "2026-02.jsonl"])

        def clean(drop, **config):
            res = dg.materialize([data.raw_examples, data.cleaned_examples], partition_key=drop, instance=instance,
                                 resources=resources, run_config=dg.RunConfig(
                                     ops={"cleaned_examples": data.CleaningConfig(**config)}))
            checks = {c.check_name: c for c in res.get_asset_check_evaluations()}
            assert res.success and checks["rows_accounted_for"].passed
            return res, checks["no_label_conflicts"]

        res, check = clean("2026-01.jsonl", conflicts="quarantine")
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and not check.blocking
        assert "line 1" in check.description and "line 2" in check.description
        quarantined = [json.loads(x) for x in (home / "quarantine" / "2026-01.jsonl.jsonl").read_text().splitlines()]
        assert [(q["line"], q["code"]) for q in quarantined] == [(1, "label_conflict"), (2, "label_conflict")]
        md = res.asset_materializations_for_node("cleaned_examples")[0].metadata
        assert md["label_conflicts"].value == 1 and md["rows_quarantined"].value == 2
        _, check = clean("2026-01.jsonl")  # keep: both rows go on to the split, still reported
        assert not check.passed and check.metadata["conflict_rows"].value == 2
        assert json.loads((home / "cleaned" / "2026-01.jsonl.stats.json").read_text())["conflicts"] == 1
        _, check = clean("2026-02.jsonl")  # line 2 is line 1 in capitals: a normalized duplicate
        assert check.passed and [json.loads(x)["line"] for x in (home / "duplicates" / "2026-02.jsonl.jsonl")
                                 .read_text().splitlines()] == [2]
        assert dg.materialize([model.base_model], instance=instance, resources=resources).success
        res = dg.materialize([data.train_holdout_split], instance=instance, resources=resources,
                             run_config=dg.RunConfig(ops={"train_holdout_split": data.SplitConfig(conflicts="latest")}))
    assert res.success
    [check] = [c for c in res.get_asset_check_evaluations() if c.check_name == "no_label_conflicts"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    manifest = json.loads((home / "split" / "manifest.json").read_text())
    assert manifest["rows_accounted_for"] and (manifest["conflicts"], manifest["conflict_rows"]) == (1, 2)
    # "ASAP" makes the newer message another input: the conflict is the two answers of drop 1's message, and
    # `latest` keeps its last line's
    replaced = [json.loads(x) for x in (home / "split" / "cross_drop_duplicates.jsonl").read_text().splitlines()]
    assert [(d["drop"], d["line"], d["kind"], d["duplicate_of"]["line"]) for d in replaced] == [
        ("2026-01.jsonl", 1, "conflict_replaced", 2)]
    kept = [json.loads(x) for n in ("train", "holdout")
            for x in (home / "split" / f"{n}.jsonl").read_text().splitlines()]
    assert sorted((r["drop"], r["line"]) for r in kept) == [("2026-01.jsonl", 2), ("2026-01.jsonl", 3),
                                                             ("2026-02.jsonl", 1)]
