"""traffic_drift (issue 31 item 4): the measures, the thresholds calibrated on the demo data, and the asset."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from ft_pipeline.data.lsh import NearDupParams
from ft_pipeline.traffic import drift
from ft_pipeline_tests.drift_messages import DRIFTING

TH = drift.Thresholds()


@pytest.fixture(scope="module")
def demo_split():
    """The demo drops (data/raw) split as the pipeline splits them (10% holdout, seed 0), without a tokenizer."""
    from ft_pipeline.data import cleaning, formats
    from ft_pipeline.data.cleaning import example_id, near_dup_key
    from ft_pipeline.data.splitting import split_examples

    drops = {}
    for p in sorted(Path(__file__).parents[1].joinpath("data", "raw").glob("*.*")):
        parsed = formats.read_drop(p)
        recs = [r for r in cleaning.iter_canonical(parsed, formats.detect_format(parsed.rows, p)) if "messages" in r]
        drops[p.name] = [{**r, "near_key": near_dup_key(r["messages"]), "id": example_id(r["messages"])} for r in recs]
    s = split_examples(drops, 0.1, 0, NearDupParams())
    return [drift.input_of(r["messages"]) for r in s.train], s.holdout


def completion(i, messages, answer="{}", finish_reason="stop", mean_logprob=None, response_format=None):
    return {"id": f"chatcmpl-{i:04d}", "messages": messages, "answer": answer, "finish_reason": finish_reason,
            "mean_logprob": mean_logprob, "response_format": response_format}


def test_calibration_demo_holdout_passes_and_drifting_prompts_are_flagged(demo_split):
    train, holdout = demo_split
    traffic = [completion(i, drift.input_of(r["messages"])) for i, r in enumerate(holdout)]
    report = drift.measure(traffic, train, NearDupParams(), TH)
    assert len(traffic) > 200 and report["unseen_share"] < 0.1 and report["length_psi"] < 0.1
    assert drift.flags(report, TH) == []
    mixed = [traffic[i] for i in np.random.default_rng(0).permutation(len(traffic))]  # a day mixes the sources
    for k in range(0, len(mixed) - 9, 10):  # a quiet day: 10 prompts like the training data
        small = drift.measure(mixed[k:k + 10], train, NearDupParams(), TH)
        assert small["unseen_share"] <= 0.3 and drift.flags(small, TH) == [], (k, small)
    odd = [completion(i, [{"role": "user", "content": m}]) for i, m in enumerate(DRIFTING)]
    report = drift.measure(odd, train, NearDupParams(), TH)
    assert report["unseen_share"] == 1.0 and len(report["unseen_examples"]) == 10
    found = drift.flags(report, TH)
    assert any("no near neighbour" in f for f in found) and any("prompt lengths shifted" in f for f in found)


def test_the_answers_measures_and_their_thresholds():
    q = [{"role": "user", "content": "where is my order"}]
    schema = {"type": "json_schema", "json_schema": {"name": "t", "schema": {
        "type": "object", "properties": {"intent": {"type": "string"}}, "required": ["intent"]}}}
    day = [completion(0, q, '{"intent": "x"}', response_format=schema, mean_logprob=-0.2),
           completion(1, q, '{"other": 1}', response_format=schema, mean_logprob=-1.5),
           completion(2, q, '{"intent": "x"', "length", response_format={"type": "json_object"}, mean_logprob=-1.6),
           completion(3, q, "plain text", mean_logprob=-1.5), completion(4, q, "plain", mean_logprob=-1.2)]
    r = drift.measure(day, [q] * 20, NearDupParams(), TH, reference_logprob=-0.3)
    assert (r["json_requests"], r["schema_valid_rate"], r["length_cut_rate"]) == (3, 1 / 3, 0.2)
    assert r["logprob_drop"] == pytest.approx(-0.3 - np.mean([-0.2, -1.5, -1.6, -1.5, -1.2]))
    found = " | ".join(drift.flags(r, TH))
    assert "cut at max_tokens" in found and "schema-valid rate 33%" in found and "log-probability" in found
    assert drift.flags(drift.measure(day[:4], [q] * 20, NearDupParams(), TH, -0.3), TH) == []  # < min_prompts
    assert drift.psi(np.arange(100.0), np.arange(100.0)) == pytest.approx(0.0)
    assert drift.reference_logprob({"metrics": {"tuned": {"holdout_loss": 0.4}}, "candidate": {"name": "tuned"}}
                                   ) == (-0.4, "tuned")


def test_the_asset_shows_the_drift_and_warns(tmp_path, demo_split):
    from ft_pipeline.defs.traffic import traffic_drift
    from ft_pipeline.resources import PipelineHome
    from ft_pipeline.traffic.store import CompletionStore, db_path
    from ft_pipeline_tests.test_reviewed_traffic import DAY, NOON, rec

    train, _ = demo_split
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(tmp_path / "raw"))
    split = home.split_dir
    (split / "train.jsonl").write_text("".join(json.dumps({"messages": m + [{"role": "assistant", "content": "{}"}]})
                                               + "\n" for m in train))
    (split / "manifest.json").write_text(json.dumps({"near_dup": NearDupParams().to_json()}))
    home.reports_dir.mkdir(parents=True, exist_ok=True)
    (home.reports_dir / "evaluation.json").write_text(json.dumps(
        {"metrics": {"tuned": {"holdout_loss": 0.3}}, "candidate": {"name": "tuned"}}))
    store = CompletionStore(db_path(home.root))
    for i, m in enumerate(DRIFTING):
        store.insert({**rec(i), "messages": [{"role": "user", "content": m}], "created": NOON + i})
    store.insert({**rec(99), "created": NOON + 86400})  # the next day: not in this partition
    store.close()
    res = dg.materialize([traffic_drift], partition_key=DAY, resources={"home": home})
    assert res.success
    md = {k: v.value for k, v in res.asset_materializations_for_node("traffic_drift")[0].metadata.items()}
    assert md["prompts"] == 10 and md["unseen_share"] == 1.0 and md["drifted"] is True
    assert md["holdout_mean_logprob"] == -0.3 and md["holdout_logprob_of"] == "tuned"
    assert md["prompt_length_histogram"].startswith("![prompt words")
    (check,) = res.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "no near neighbour" in check.description
    quiet = dg.materialize([traffic_drift], partition_key="2026-05-22", resources={"home": home})
    (check,) = quiet.get_asset_check_evaluations()
    assert check.passed and "not judged" in check.description
    (split / "train.jsonl").unlink()  # a home that serves before it trains: measured, not judged, no failure
    bare = dg.materialize([traffic_drift], partition_key=DAY, resources={"home": home})
    (check,) = bare.get_asset_check_evaluations()
    assert bare.success and check.passed and check.description == "no train set yet, not judged"


def test_a_drifted_day_asks_for_a_re_evaluation_once():
    from ft_pipeline.defs.traffic import drift_reevaluation_sensor

    def tick(inst, cursor=None):
        return drift_reevaluation_sensor(dg.build_sensor_context(instance=inst, cursor=cursor))

    def drifted(inst, day, value):
        inst.report_runless_asset_event(dg.AssetMaterialization("traffic_drift", partition=day,
                                                                metadata={"drifted": value}))

    with dg.instance_for_test() as inst:
        drifted(inst, "2026-05-20", False)
        quiet = tick(inst)
        assert not quiet.run_requests and "none drifted" in quiet.skip_reason.skip_message
        drifted(inst, "2026-05-21", True)
        assert "nothing was evaluated yet" in tick(inst, quiet.cursor).skip_reason.skip_message
        inst.report_runless_asset_event(dg.AssetMaterialization("evaluation_report"))
        drifted(inst, "2026-05-22", True)
        first = tick(inst, quiet.cursor)
        (req,) = first.run_requests
        assert req.tags["ft_pipeline/drifted_days"] == "2026-05-21,2026-05-22"
        assert not tick(inst, first.cursor).run_requests  # asked once
