"""The flywheel end to end with real parts (issue 31): `ft-pipeline serve` over a home with a registered champion
(the smoke run on builtin:tiny), the official openai client storing 40 demo-style messages and 10 that drift,
listing and retrieving them, verdicts given through `client.chat.completions.update` and through `ft-pipeline
review` on a pseudo-terminal; the `traffic` assets materialized for two days on the home's real Dagster instance
(the in-distribution day is not flagged, the drifted one is, and the re-evaluation sensor asks for a run); the
reviewed drop picked up by the raw-drop sensor; a retrain (`ft-pipeline run`) whose registered version's MLflow
lineage names the stored completion ids and the version that answered them; and a forgotten completion that
leaves no trace after the next run. That the store keeps every acknowledged completion through a SIGKILL of the
server is test_stored_completions.py::test_a_sigkilled_server_keeps_every_acknowledged_completion."""

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import openai
import pytest

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline.traffic.store import CompletionStore, NotFound, db_path
from ft_pipeline_tests._env import smoke_preset
from ft_pipeline_tests._serving import start_cli_server
from ft_pipeline_tests.drift_messages import DRIFTING
from ft_pipeline_tests.flywheel_traffic import MODEL, demo_style, send
from ft_pipeline_tests.test_review_cli import Term

pytestmark = pytest.mark.slow

# The retrain: the smoke preset without what this test does not look at (DPO, the retention check, most of the
# prompting baselines), so that the loop costs one short training.
RETRAIN = dict(preference_adapter={"enabled": False},
               evaluation_report={"retention_prompts": 0, "baseline_kinds": ["zero_shot"], "baseline_examples": 4})


def run_cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ft_pipeline.cli", *args], env=env, capture_output=True,
                          text=True, timeout=2400)


def _store(home: Path) -> CompletionStore:
    return CompletionStore(db_path(home))


def _capture(ns) -> None:
    """The client's side: store 50 completions, list them with OpenAI's filters and cursors, retrieve them."""
    c = ns.client
    ns.demo_answers = dict(demo_style(40))
    ns.demo = [x.id for x in send(c, list(ns.demo_answers), "demo")]
    ns.drift = [x.id for x in send(c, DRIFTING, "drift")]
    ns.listed_all = [x.id for x in c.chat.completions.list(model=MODEL, metadata={"app": "support"}, limit=7)]
    ns.listed_drift = [x.id for x in c.chat.completions.list(metadata={"batch": "drift"})]
    ns.listed_version = [x.id for x in c.chat.completions.list(model=f"{MODEL}/1", limit=100)]
    ns.page = c.chat.completions.list(after=ns.demo[9], limit=5, metadata={"app": "support"})
    ns.newest = c.chat.completions.list(limit=3, order="desc")
    ns.got = c.chat.completions.retrieve(ns.demo[0])
    ns.messages = list(c.chat.completions.messages.list(ns.drift[0]))


def _verdicts_by_api(ns) -> None:
    """What an application records: thumbs up, corrections (the right JSON), thumbs down."""
    c, base = ns.client, {"app": "support", "batch": "demo"}
    messages = list(ns.demo_answers)
    for i in range(12):
        c.chat.completions.update(ns.demo[i], metadata={**base, "review": "accepted", "reviewer": "app"})
    for i in range(12, 15):
        ns.corrected = c.chat.completions.update(ns.demo[i], metadata={**base, "correction":
                                                                        ns.demo_answers[messages[i]]})
    for i in range(15, 17):
        c.chat.completions.update(ns.demo[i], metadata={**base, "review": "rejected"})


def _verdicts_in_a_terminal(ns, env) -> None:
    """A person at `ft-pipeline review`: the drifting batch first (newest first: the last drifting message
    is shown first), corrected once on a line, skipped once, rejected otherwise; then the demo batch's rest."""
    env = {k: v for k, v in env.items() if k not in ("EDITOR", "VISUAL")}
    term = Term(["--metadata", "batch=drift", "--reviewer", "ana"], env)
    for k in range(10):
        assert ns.drift[9 - k] in term.expect("[q]uit: ")
        if k == 0:
            term.send("c")
            term.expect("correction (one line")
            term.send('{"intent": "other", "product": null, "order_id": null, "urgency": "low"}')
        else:
            term.send("s" if k == 1 else "r")
    ns.review_drift = term.expect("verdict")
    assert term.close() == 0
    term = Term(["--metadata", "batch=demo", "--reviewer", "bo"], env)
    for k in range(23):  # demo 39 .. 17: those without a verdict
        assert ns.demo[39 - k] in term.expect("[q]uit: ")
        term.send("a")
    ns.review_demo = term.expect("verdict")
    assert term.close() == 0


def _dagster(env, *args) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "dagster", *args], env=env, capture_output=True, text=True,
                         timeout=1200, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def loop(smoke_home):
    tmp, env, first = smoke_home()  # the smoke run on a copy of the demo drops: champion version 1 on builtin:tiny
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    home, raw = tmp / "home", tmp / "raw"
    env = {**env, "DAGSTER_HOME": str(home / "dagster")}  # the home's instance, as `ft-pipeline run` prepared it
    ns = SimpleNamespace(tmp=tmp, home=home, raw=raw, env=env)

    log = (tmp / "serve.log").open("w")
    proc, url = start_cli_server(env, "--default-response-format", "registered", stdout=log,
                                 stderr=subprocess.STDOUT)
    try:
        ns.client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
        _capture(ns)
        _verdicts_by_api(ns)
        _verdicts_in_a_terminal(ns, env)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()

    # A daily partition exists once its day is over (the schedule materializes yesterday's), so the test moves the
    # traffic back in time, as test_reviewed_traffic moves `reviewed_at`: the demo batch was sent the day before
    # yesterday, the drifting batch and every verdict yesterday (the drift day).
    ns.drift_day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    ns.quiet_day = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 2 * 86400))
    store = _store(home)
    with store._write() as db:
        db.executemany("UPDATE completions SET created = created - 172800 WHERE id = ?", [(i,) for i in ns.demo])
        db.executemany("UPDATE completions SET created = created - 86400 WHERE id = ?", [(i,) for i in ns.drift])
        db.execute("UPDATE completions SET reviewed_at = reviewed_at - 86400 WHERE reviewed_at IS NOT NULL")
    store.close()
    for day in (ns.quiet_day, ns.drift_day):  # what traffic_daily_schedule does at 00:15, by hand (docs/flywheel.md)
        _dagster(env, "asset", "materialize", "-m", "ft_pipeline.definitions", "--select",
                 "reviewed_traffic,traffic_drift", "--partition", day)

    from ft_pipeline.defs.sensors import raw_drops_sensor
    from ft_pipeline.defs.traffic import drift_reevaluation_sensor
    from ft_pipeline.resources import PipelineHome

    with dg.DagsterInstance.from_config(str(home / "dagster")) as inst:
        ns.drift_md = {r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()}
                       for r in inst.fetch_materializations(dg.AssetKey("traffic_drift"), limit=10).records}
        ns.reviewed_md = {r.partition_key: {k: v.value for k, v in r.asset_materialization.metadata.items()}
                          for r in inst.fetch_materializations(dg.AssetKey("reviewed_traffic"), limit=10).records}
        # each day's check evaluation, from the run that materialized that day's partition
        ns.checks = {}
        for r in inst.fetch_materializations(dg.AssetKey("traffic_drift"), limit=10).records:
            (ev,) = [e.dagster_event.event_specific_data
                     for e in inst.all_logs(r.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
                     if e.dagster_event.event_specific_data.check_name == "traffic_within_drift_thresholds"]
            ns.checks[r.partition_key] = ev
        pipeline_home = PipelineHome(home=str(home), raw_dir=str(raw))
        ns.sensor = raw_drops_sensor(dg.build_sensor_context(instance=inst, resources={"home": pipeline_home}))
        ns.drift_sensor = drift_reevaluation_sensor(dg.build_sensor_context(instance=inst))

    ns.preset = smoke_preset(tmp / "retrain.yaml", **RETRAIN)
    ns.retrain = run_cli(env, "run", "--preset", str(ns.preset))  # the pipeline's main job, as `make run`
    ns.lineage = run_cli(env, "lineage", "--version", "2")
    return ns


def test_the_client_stores_lists_and_retrieves(loop):
    ns = loop
    assert len(set(ns.demo + ns.drift)) == 50
    assert ns.listed_all == ns.demo + ns.drift  # paged 7 at a time, in the order they were stored
    assert ns.listed_drift == ns.drift and ns.listed_version == ns.demo + ns.drift
    assert [x.id for x in ns.page.data] == ns.demo[10:15] and ns.page.has_more
    assert [x.id for x in ns.newest.data] == ns.drift[:-4:-1]
    got = ns.got.model_extra["ft_pipeline"]
    assert ns.got.metadata == {"app": "support", "batch": "demo"} and ns.got.model == MODEL
    assert (got["registered_model"], got["version"], got["stored"]) == (MODEL, "1", "requested")
    # answered under the registered schema (--default-response-format registered): stored with it, so that the
    # drift asset's schema-valid rate counts these answers
    assert ns.got.model_extra["response_format"]["type"] == "json_schema"
    assert [(m.role, m.content) for m in ns.messages] == [("user", DRIFTING[0])]


def test_verdicts_through_the_api_and_the_terminal(loop):
    ns = loop
    extra = ns.corrected.model_extra["ft_pipeline"]
    assert (extra["review"], extra["reviewer"]) == ("corrected", "api")
    assert json.loads(extra["correction"])["intent"]  # the right JSON, as the application sent it
    assert "0 accepted, 1 corrected, 8 rejected, 1 skipped; 1 without a verdict" in ns.review_drift
    assert "23 accepted, 0 corrected, 0 rejected, 0 skipped; 0 without a verdict" in ns.review_demo


def test_the_reviewed_day_becomes_a_drop_and_the_sensor_picks_it_up(loop):
    ns = loop
    md = ns.reviewed_md[ns.drift_day]
    assert (md["accepted"], md["corrected"], md["rejected"]) == (35, 4, 10)
    assert (md["sft_rows"], md["preference_pairs"]) == (39, 4)
    assert ns.reviewed_md[ns.quiet_day]["files"] == []  # no verdict was given that day
    drop = f"{ns.drift_day}-reviewed_traffic.jsonl"
    assert (ns.raw / drop).exists() and (ns.raw / "preferences" / drop).exists()
    assert ns.sensor.dynamic_partitions_requests[0].partition_keys == [drop]
    assert [(r.job_name, r.partition_key) for r in ns.sensor.run_requests] == [("ingest_drop", drop),
                                                                               ("ingest_preferences", None)]


def test_drift_flags_the_drifted_day_and_not_the_in_distribution_one(loop):
    ns = loop
    quiet, odd = ns.drift_md[ns.quiet_day], ns.drift_md[ns.drift_day]
    assert quiet["prompts"] == 40 and odd["prompts"] == 10
    assert quiet["drifted"] is False and quiet["unseen_share"] <= 0.2, quiet
    assert odd["drifted"] is True and odd["unseen_share"] == 1.0, odd
    assert quiet["json_requests"] == 40  # every answer was under the registered schema
    assert ns.checks[ns.quiet_day].passed
    flagged = ns.checks[ns.drift_day]
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert "no near neighbour" in flagged.description
    (req,) = ns.drift_sensor.run_requests  # the champion is re-evaluated on the grown holdout
    assert req.tags["ft_pipeline/drifted_days"] == ns.drift_day


def test_the_retrain_registers_a_version_whose_lineage_names_the_completions(loop):
    ns = loop
    assert ns.retrain.returncode == 0, ns.retrain.stdout[-3000:] + ns.retrain.stderr[-3000:]
    assert "registered: ft-pipeline-adapter version 2" in ns.retrain.stdout
    assert ns.lineage.returncode == 0, ns.lineage.stderr[-3000:]
    rows = [json.loads(x) for x in ns.lineage.stdout.splitlines()]
    served = [r for r in rows if "completion_id" in r]
    split = ns.home / "data" / "split"
    in_train = {json.loads(x).get("completion_id") for x in (split / "train.jsonl").open()} - {None}
    in_holdout = {json.loads(x).get("completion_id") for x in (split / "holdout.jsonl").open()} - {None}
    reviewed = set(ns.demo) | {ns.drift[9]}  # accepted or corrected; never a rejected one
    assert len(served) >= 25 and {r["completion_id"] for r in served} == in_train, served[:3]
    assert in_train | in_holdout <= reviewed and in_holdout  # and the fresh holdout holds some of it
    assert set(ns.demo[15:17]).isdisjoint(in_train | in_holdout)
    assert {r["answered_by"] for r in served} == {f"{MODEL}/1"}
    assert all(r["file"] == f"{ns.drift_day}-reviewed_traffic.jsonl" for r in served)


def _files_holding(root: Path, needle: str) -> list[str]:
    data = needle.encode()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and data in p.read_bytes())


def test_a_forgotten_completion_leaves_no_trace(loop):
    ns = loop
    trained = [json.loads(x).get("completion_id") for x in ns.lineage.stdout.splitlines()]
    store = _store(ns.home)
    texts = {i: store.get(i)["messages"][0]["content"] for i in ns.demo if i in trained}
    store.close()
    # one whose text JSON writes as it is (one line, ASCII, no quotes), so a byte search finds every copy of it
    target, text = next((i, t) for i, t in texts.items()
                        if t.isascii() and not set(t) & set('"\\\n') and len(t) > 30)
    assert _files_holding(ns.raw, text) == [f"{ns.drift_day}-reviewed_traffic.jsonl"]  # in no demo drop
    assert _files_holding(ns.home, text)  # the store, the cleaned data, the split, ...
    forget = run_cli(ns.env, "forget", "--completion-id", target, "--reason", "user asked")
    assert forget.returncode == 0, forget.stderr[-3000:]
    assert "deleted 1 stored completion" in forget.stdout
    # what the raw-drop sensor and the automation run next: the rewritten drop ingested again, then the split
    drop = f"{ns.drift_day}-reviewed_traffic.jsonl"
    _dagster(ns.env, "asset", "materialize", "-m", "ft_pipeline.definitions", "--select",
             "raw_examples,cleaned_examples", "--partition", drop)
    _dagster(ns.env, "asset", "materialize", "-m", "ft_pipeline.definitions", "--select", "train_set,holdout_set")
    store = _store(ns.home)
    with pytest.raises(NotFound):
        store.get(target)
    assert store.count() == 49
    store.close()
    # no file under the home (the store, the cleaned data, the split, the Dagster and MLflow stores), nor the drop
    assert _files_holding(ns.home, text) == [] and _files_holding(ns.raw, text) == []
    for folder in (ns.raw, ns.home / "data" / "cleaned", ns.home / "data" / "split", ns.home / "traffic"):
        assert _files_holding(folder, target) == [], folder
    assert sorted(p.name for p in ns.raw.glob("*reviewed_traffic*")) == [f"{ns.drift_day}-reviewed_traffic.jsonl"]
