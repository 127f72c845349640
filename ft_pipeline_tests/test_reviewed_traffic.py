"""The reviewed_traffic asset (issue 31 item 3): a day's verdicts become a drop the raw-drop sensor picks up."""

import calendar
import json
import time

import dagster as dg

from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.resources import PipelineHome
from ft_pipeline.traffic.capture import record
from ft_pipeline.traffic.store import CompletionStore, db_path

DAY = "2026-05-20"
NOON = calendar.timegm(time.strptime(f"{DAY} 12:00", "%Y-%m-%d %H:%M"))


def rec(i: int, **kw) -> dict:
    return record(**dict(id=f"chatcmpl-{i:04d}", created=NOON - 3600 + i, model="ft-pipeline-adapter",
                         registered_model="ft-pipeline-adapter", version=str(i % 2 + 1),
                         messages=[{"role": "user", "content": f"Where is my order number {i}?"}],
                         answer=f"answer {i}", finish_reason="stop", prompt_tokens=5, completion_tokens=3,
                         latency_ms=12.5, mean_logprob=-0.7, metadata={}, **kw))


def reviewed_home(tmp_path, verdicts: dict[int, tuple[str, str | None]], at: int = NOON) -> PipelineHome:
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    (tmp_path / "raw").mkdir(exist_ok=True)
    store = CompletionStore(db_path(home.root))
    for i in range(6):
        store.insert(rec(i))
    for i, (review, correction) in verdicts.items():
        store.set_verdict(f"chatcmpl-{i:04d}", review, correction, "ana")
    store._conn().execute("UPDATE completions SET reviewed_at = ? WHERE review IS NOT NULL", (at,))
    store.close()
    return home


def materialize(home, day=DAY, inst=None):
    from ft_pipeline.defs.traffic import reviewed_traffic

    res = dg.materialize([reviewed_traffic], partition_key=day, resources={"home": home}, instance=inst)
    assert res.success
    mat = res.asset_materializations_for_node("reviewed_traffic")[0]
    return {k: v.value for k, v in mat.metadata.items()}


def test_verdicts_are_accounted_and_rejected_rows_kept_out(tmp_path):
    home = reviewed_home(tmp_path, {0: ("accepted", None), 1: ("corrected", "Order 1 ships Monday."),
                                    2: ("rejected", None), 3: ("rejected", None)})
    md = materialize(home)
    assert (md["accepted"], md["corrected"], md["rejected"], md["sft_rows"], md["preference_pairs"]) == (1, 1, 2, 2, 1)
    rows = [json.loads(ln) for ln in (tmp_path / "raw" / f"{DAY}-reviewed_traffic.jsonl").open()]
    assert [r["completion_id"] for r in rows] == ["chatcmpl-0000", "chatcmpl-0001"]  # not the rejected ones
    assert rows[1]["messages"][-1]["content"] == "Order 1 ships Monday." and rows[1]["version"] == "2"
    assert [r.data["completion_id"] for r in md["lineage"].records] == ["chatcmpl-0000", "chatcmpl-0001",
                                                                     "chatcmpl-0002", "chatcmpl-0003"]
    pair = json.loads((tmp_path / "raw" / "preferences" / f"{DAY}-reviewed_traffic.jsonl").read_text())
    assert pair["rejected"][0]["content"] == "answer 1"
    # the day after: no verdicts, an empty partition and no drop file
    assert materialize(home, "2026-05-21")["sft_rows"] == 0
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.jsonl")) == [f"{DAY}-reviewed_traffic.jsonl"]


def test_a_home_without_a_store_materializes_quietly_and_creates_nothing(tmp_path):
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    md = materialize(home)
    assert (md["accepted"], md["rejected"], md["files"]) == (0, 0, [])
    assert not db_path(home.root).exists() and not (tmp_path / "raw").exists()


def test_the_raw_drop_sensor_requests_the_reviewed_drop(tmp_path):
    from ft_pipeline.defs.sensors import raw_drops_sensor

    home = reviewed_home(tmp_path, {0: ("accepted", None), 4: ("corrected", "Better.")})
    with dg.instance_for_test() as inst:
        materialize(home, inst=inst)
        res = raw_drops_sensor(dg.build_sensor_context(instance=inst, resources={"home": home}))
    drop = f"{DAY}-reviewed_traffic.jsonl"
    assert res.dynamic_partitions_requests[0].partition_keys == [drop]
    assert [(r.job_name, r.partition_key) for r in res.run_requests] == [("ingest_drop", drop),
                                                                         ("ingest_preferences", None)]


def test_the_data_layer_keeps_the_lineage_on_the_raw_row(tmp_path, monkeypatch):
    """(drop, line) of a training row leads to the raw line with its completion_id and version, and the
    cleaned row carries both (completion_id, answered_by) into the split and the MLflow lineage."""
    import mlflow

    from ft_pipeline.data import cleaning, formats
    from ft_pipeline.registry import versions

    home = reviewed_home(tmp_path, {5: ("accepted", None)})
    materialize(home)
    path = tmp_path / "raw" / f"{DAY}-reviewed_traffic.jsonl"
    parsed = formats.read_drop(path)
    (canon,) = list(cleaning.iter_canonical(parsed, formats.detect_format(parsed.rows, path)))
    raw_line = json.loads(path.read_text().splitlines()[canon["line"] - 1])
    assert (raw_line["completion_id"], raw_line["version"]) == ("chatcmpl-0005", "2")
    assert canon["messages"][-1] == {"role": "assistant", "content": "answer 5"}
    (kept,) = cleaning.clean_records([canon]).kept
    assert (kept["completion_id"], kept["answered_by"]) == ("chatcmpl-0005", "ft-pipeline-adapter/2")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        versions.log_lineage([kept])
    (row,) = [json.loads(x) for x in mlflow.artifacts.load_text(
        f"runs:/{run.info.run_id}/{versions.LINEAGE_ARTIFACT}").splitlines()]
    assert (row["completion_id"], row["answered_by"], row["line"]) == ("chatcmpl-0005", "ft-pipeline-adapter/2", 1)


def test_a_corrections_pairs_keep_their_completion_ids_into_the_dpo_lineage(tmp_path, monkeypatch):
    """A reviewed-traffic preference drop's pairs (train and holdout) keep `completion_id` and `answered_by`, as
    its SFT rows do, and the rows the DPO asset logs as lineage name them."""
    import mlflow

    from ft_pipeline.preference.pairs import build_pairs, lineage_rows
    from ft_pipeline.registry import versions

    home = reviewed_home(tmp_path, {i: ("corrected", f"Order {i} ships on day {i}.") for i in range(6)})
    materialize(home)
    manifest = build_pairs(tmp_path / "raw" / "preferences", tmp_path / "pairs", holdout_fraction=0.5)
    train, holdout = (read_jsonl(tmp_path / "pairs" / f"{s}.jsonl") for s in ("train", "holdout"))
    assert (manifest["train"], manifest["holdout"]) == (len(train), len(holdout)) and train
    assert sorted((p["completion_id"], p["answered_by"]) for p in train + holdout) == \
        [(f"chatcmpl-{i:04d}", f"ft-pipeline-adapter/{i % 2 + 1}") for i in range(6)]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        versions.log_lineage(lineage_rows(train, "preferences"))
    rows = [json.loads(x) for x in mlflow.artifacts.load_text(
        f"runs:/{run.info.run_id}/{versions.LINEAGE_ARTIFACT}").splitlines()]
    assert [(r["completion_id"], r["answered_by"]) for r in rows] == \
        [(p["completion_id"], p["answered_by"]) for p in train]
    assert {r["drop"] for r in rows} == {f"preferences/{DAY}-reviewed_traffic.jsonl"}


def test_the_schedule_runs_yesterday_and_run_never_selects_traffic():
    from ft_pipeline.definitions import defs

    sched = defs.resolve_schedule_def("traffic_daily_schedule")
    assert sched.cron_schedule == "15 0 * * *" and sched.default_status == dg.DefaultScheduleStatus.RUNNING
    selected = lambda job: defs.resolve_job_def(job).asset_layer.selected_asset_keys  # noqa: E731
    assert dg.AssetKey("reviewed_traffic") not in selected("train_and_register") | selected("ingest_drop")
    assert dg.AssetKey("reviewed_traffic") in selected("traffic_daily")


def test_reviewed_rows_grow_the_holdout_by_the_same_stable_hash():
    """No special code: the split deals every row by holdout_bucket(near_key, seed), whatever its drop, so about
    holdout_fraction of the reviewed rows land in the holdout, the same ones under any drop name, and the
    existing rows do not move."""
    from ft_pipeline.data.splitting import holdout_bucket, split_examples
    from ft_pipeline_tests.test_splitting import ND, question, sides
    from ft_pipeline_tests.test_splitting import rec as split_rec

    base = [split_rec("demo.jsonl", i, question(i)) for i in range(300)]
    traffic = [split_rec(f"{DAY}-reviewed_traffic.jsonl", i, question(10_000 + i)) for i in range(400)]
    before = sides(split_examples({"demo.jsonl": base}, 0.1, seed=0, near_dup=ND))
    after = sides(split_examples({"demo.jsonl": base, f"{DAY}-reviewed_traffic.jsonl": traffic}, 0.1, 0, ND))
    assert all(after[k] == v for k, v in before.items())
    held = [r for r in traffic if after[r["id"]] == "holdout"]
    assert 25 <= len(held) <= 60  # 10% of 400, give or take
    assert all((after[r["id"]] == "holdout") == (holdout_bucket(r["near_key"], 0) < 0.1) for r in traffic)
    renamed = [{**r, "drop": "other.jsonl"} for r in traffic]
    assert sides(split_examples({"demo.jsonl": base, "other.jsonl": renamed}, 0.1, 0, ND)) == after


def test_the_asset_reads_a_moved_store(tmp_path, monkeypatch):
    home = reviewed_home(tmp_path, {0: ("accepted", None)})
    moved = tmp_path / "elsewhere.db"
    db_path(home.root).rename(moved)
    for suffix in ("-wal", "-shm"):
        if (p := db_path(home.root).with_name(f"completions.db{suffix}")).exists():
            p.rename(moved.with_name(f"elsewhere.db{suffix}"))
    monkeypatch.setenv("FT_PIPELINE_STORE_PATH", str(moved))
    assert materialize(home)["accepted"] == 1
