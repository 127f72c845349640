"""The raw-drop sensor on a real (temporary) Dagster instance."""

import json

import dagster as dg

from ft_pipeline.data.drop_files import drop_key
from ft_pipeline.defs.partitions import drops
from ft_pipeline.defs.sensors import raw_drops_sensor
from ft_pipeline.resources import PipelineHome


def tick(inst, home, cursor=None):
    return raw_drops_sensor(dg.build_sensor_context(instance=inst, cursor=cursor, resources={"home": home}))


def test_new_drops_get_a_partition_and_a_run_and_removed_ones_none(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"text": "x"}\n')
    (raw / "Support export (Nov 2026).jsonl").write_text('{"text": "x"}\n')  # a real export's name: a derived key
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw))
    real = drop_key("Support export (Nov 2026).jsonl")
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(drops.name, ["gone.jsonl"])  # registered earlier, file since removed
        first = tick(inst, home)
        assert sorted(r.partition_key for r in first.run_requests) == sorted(["a.jsonl", real])
        assert sorted(first.dynamic_partitions_requests[0].partition_keys) == sorted(["a.jsonl", real])
        inst.add_dynamic_partitions(drops.name, ["a.jsonl", real])
        # Known but never ingested: the sensor still asks for it (no materialization has its hash yet).
        second = tick(inst, home, first.cursor)
        assert sorted(r.partition_key for r in second.run_requests) == sorted(["a.jsonl", real])
        assert {r.run_key for r in second.run_requests} == {r.run_key for r in first.run_requests}  # same content
        assert not second.dynamic_partitions_requests


def test_ingested_drops_are_quiet_until_their_content_changes(tmp_path):
    from ft_pipeline.defs.data import raw_examples
    from ft_pipeline.resources import MlflowTracking

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"text": "x"}\n')
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw))
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(drops.name, ["a.jsonl"])
        assert dg.materialize([raw_examples], partition_key="a.jsonl", instance=inst,
                              resources={"home": home, "mlflow_tracking": tracking}).success
        quiet = tick(inst, home)
        assert quiet.run_requests == [] and "no new or changed drops" in quiet.skip_reason.skip_message
        (raw / "a.jsonl").write_text('{"text": "y"}\n')
        changed = tick(inst, home, quiet.cursor)
        assert [r.partition_key for r in changed.run_requests] == ["a.jsonl"]


def test_an_erasure_request_re_ingests_the_drops(tmp_path):
    """The erasure list is part of raw_examples' data version: the sensor asks for the drop again, and the
    re-ingested raw_examples holds the row without its text."""
    from ft_pipeline.defs.data import raw_examples
    from ft_pipeline.erasure import requests as erasure
    from ft_pipeline.jsonl import read_jsonl
    from ft_pipeline.resources import MlflowTracking

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"prompt": "forget me please", "completion": "ok"}\n'
                                 '{"prompt": "b", "completion": "c"}\n')
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw))
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    resources = {"home": home, "mlflow_tracking": tracking}
    with dg.instance_for_test() as inst:
        inst.add_dynamic_partitions(drops.name, ["a.jsonl"])
        assert dg.materialize([raw_examples], partition_key="a.jsonl", instance=inst, resources=resources).success
        quiet = tick(inst, home)
        assert quiet.run_requests == []
        erasure.append_request(home.root, erasure.new_request(erasure.find_rows(raw, "a.jsonl", 1)))
        again = tick(inst, home, quiet.cursor)
        assert [r.partition_key for r in again.run_requests] == ["a.jsonl"]
        assert dg.materialize([raw_examples], partition_key="a.jsonl", instance=inst, resources=resources).success
        assert tick(inst, home, again.cursor).run_requests == []  # ingested with the request: quiet again
        records = read_jsonl(home.data("raw_examples", "a.jsonl"))
        assert "erased" in records[0] and "forget me" not in json.dumps(records)


def test_new_or_changed_preference_drops_re_read_the_pairs(tmp_path):
    from ft_pipeline.defs.preference import preference_pairs
    from ft_pipeline.resources import MlflowTracking

    raw = tmp_path / "raw"
    (raw / "preferences").mkdir(parents=True)
    pair = {"prompt": "cancel order ORD-123456", "chosen": '{"intent": "cancel_order"}',
            "rejected": '{"intent": "refund"}'}
    (raw / "preferences" / "p.jsonl").write_text(json.dumps(pair) + "\n")
    home = PipelineHome(home=str(tmp_path / "home"), raw_dir=str(raw))
    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=str(tmp_path / "art"))
    with dg.instance_for_test() as inst:
        first = tick(inst, home)
        assert [r.job_name for r in first.run_requests] == ["ingest_preferences"]  # the subfolder is no partition
        assert not first.dynamic_partitions_requests
        assert dg.materialize([preference_pairs], instance=inst,
                              resources={"home": home, "mlflow_tracking": tracking}).success
        assert tick(inst, home, first.cursor).run_requests == []
        (raw / "preferences" / "p.jsonl").write_text(json.dumps({**pair, "rejected": '{"intent": "other"}'}) + "\n")
        again = tick(inst, home, first.cursor)
        assert [r.job_name for r in again.run_requests] == ["ingest_preferences"]
        assert again.run_requests[0].run_key != first.run_requests[0].run_key
