"""OpenAI's fine-tuning API on the real server (slow), driven by the official openai client: the demo chat drop
uploaded, listed, read back; a job on it trained by a real Dagster run on the home's instance (builtin:tiny), polled
to succeeded, its validation file its holdout, its events and checkpoints read and its fine_tuned_model called on
the same server; a DPO job on OpenAI's preference pairs trained SFT then DPO and registered from DPO; a second job of
the same task queued behind a running one, both cancelled and their Dagster run shown cancelled; a file that
fails validation failing its job with the quarantine's reasons; every bad input refused with OpenAI's error shape
and nothing half-created; a deleted file erased from the task that trained on it."""

import json
import os
import time
from types import SimpleNamespace

import openai
import pytest

from ft_pipeline.finetuning import validation
from ft_pipeline.jsonl import read_jsonl
from ft_pipeline.serving.app import create_app
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._serving import ServerThread

pytestmark = pytest.mark.slow

DEMO = REPO_ROOT / "data" / "raw" / "2026-01-support_chat.jsonl"
PAIRS = REPO_ROOT / "data" / "raw" / "preferences" / "2026-04-preferences.jsonl"  # TRL's format
FAST = REPO_ROOT / "ft_pipeline_tests" / "finetuning_fast.yaml"


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finetuning")
    home = tmp / "home"
    (home / "mlflow").mkdir(parents=True)
    env = {"FT_PIPELINE_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
           "FT_PIPELINE_FINETUNING_PRESET": str(FAST), "DAGSTER_HOME": None, "FT_PIPELINE_RAW_DIR": str(tmp / "raw"),
           "FT_PIPELINE_TASKS": None}
    old = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    app = create_app(ServeConfig(poll_s=1, batch_window_ms=10, max_file_bytes=len(DEMO.read_bytes()) + 1000))
    try:
        with ServerThread(app) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
            yield SimpleNamespace(client=client, home=home, tmp=tmp, url=url)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _slice(api, name: str, n: int, start: int = 0) -> str:
    """A fine-tune file of `n` rows of the demo drop from row `start`, uploaded; its id."""
    path = api.tmp / name
    path.write_bytes(b"".join(DEMO.read_bytes().splitlines(keepends=True)[start:start + n]))
    return api.client.files.create(file=path.open("rb"), purpose="fine-tune").id


def _pairs(api, name: str, n: int, start: int = 0) -> str:
    """A DPO file of `n` pairs of the demo preference drop from row `start`, in OpenAI's format, uploaded; its id."""
    rows = [json.loads(x) for x in PAIRS.read_text().splitlines()[start:start + n]]
    path = api.tmp / name
    path.write_text("".join(json.dumps({"input": {"messages": r["prompt"]}, "preferred_output": r["chosen"],
                                        "non_preferred_output": r["rejected"]}) + "\n" for r in rows))
    return api.client.files.create(file=path.open("rb"), purpose="fine-tune").id


def _lines(path) -> list[tuple[str, int]]:
    """(drop, line) of each row of a JSONL file the pipeline wrote (none when it does not exist)."""
    return [(r["drop"], r["line"]) for r in read_jsonl(path)] if path.exists() else []


def _metadata(home, task: str, asset: str) -> dict:
    """The metadata of an asset's latest materialization."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey([task, asset]))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _wait(client, job_id: str, until, timeout: float = 1500):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(1)


def _dagster_status(home, run_id: str) -> str:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return instance.get_run_by_id(run_id).status.value


def _materialized(home, run_id: str) -> set[str]:
    """The asset keys a Dagster run materialized."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        return {r.event_log_entry.dagster_event.asset_key.to_user_string() for r in records}


def _partitions(home, name: str) -> list[str]:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        return instance.get_dynamic_partitions(name)


def test_upload_job_events_checkpoints_and_fine_tuned_model(api):
    c = api.client
    demo = c.files.create(file=DEMO.open("rb"), purpose="fine-tune")
    assert demo.object == "file" and demo.purpose == "fine-tune" and demo.bytes == len(DEMO.read_bytes())
    assert demo.filename == DEMO.name and c.files.retrieve(demo.id).id == demo.id
    assert c.files.content(demo.id).content == DEMO.read_bytes()
    assert demo.id in [f.id for f in c.files.list(purpose="fine-tune").data]

    train, valid = _slice(api, "support_48.jsonl", 48), _slice(api, "support_valid_16.jsonl", 16, start=400)
    job = c.fine_tuning.jobs.create(model="builtin:tiny", training_file=train, validation_file=valid,
                                    suffix="support", seed=7,
                                    metadata={"team": "support"},
                                    method={"type": "supervised",
                                            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}})
    assert job.status == "validating_files" and job.fine_tuned_model is None and job.metadata == {"team": "support"}
    running = _wait(c, job.id, lambda j: j.status not in ("validating_files", "queued"))
    done = _wait(c, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert running.status in ("running", "succeeded")
    assert done.fine_tuned_model == f"ft:builtin:tiny:support:{job.id}" and done.finished_at >= done.created_at
    assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 8 and done.seed == 7
    assert done.trained_tokens > 0 and done.estimated_finish is None
    extra = done.model_extra["ft_pipeline"]
    assert extra["task"] == "support" and extra["registered_model"] == "support" and extra["version"] == "1"
    assert [_dagster_status(api.home, r) for r in extra["dagster_run_ids"]] == ["SUCCESS"] * 3  # 2 drops, train
    # the job is the task `support` of the pipeline: its runs materialize its keys, never the default task's
    keys = set().union(*(_materialized(api.home, r) for r in extra["dagster_run_ids"]))
    assert {"support/raw_examples", "support/lora_adapter", "support/registered_model"} <= keys
    assert all(k.startswith("support/") for k in keys), keys
    assert sorted(_partitions(api.home, "drops_support")) == sorted([f"{train}.jsonl", f"{valid}.jsonl"])
    assert _partitions(api.home, "drops") == [] and (api.tmp / "raw" / "support" / f"{train}.jsonl").is_file()
    # the validation file is the holdout: exactly its usable rows (less any the pipeline recorded as removed:
    # cleaning's quarantine and duplicates, the split's duplicates of train rows and too-long rows), and no train
    # row is one of its rows
    data = api.home / "tasks" / "support" / "data"
    vdrop = f"{valid}.jsonl"
    usable = {(vdrop, n) for n in range(1, 17)} - {
        (vdrop, q["line"]) for q in validation.parse(api.tmp / "support_valid_16.jsonl").quarantined}
    removed = set().union(*(_lines(data / kind / f"{vdrop}.jsonl") for kind in ("quarantine", "duplicates")),
                          *(_lines(data / "split" / f"{kind}.jsonl") for kind in ("cross_drop_duplicates", "too_long")))
    holdout = _lines(data / "split" / "holdout.jsonl")
    assert len(holdout) >= 10 and set(holdout) == usable - removed and len(removed & usable) <= 2, removed
    assert {d for d, _ in _lines(data / "split" / "train.jsonl")} == {f"{train}.jsonl"}
    meta = _metadata(api.home, "support", "holdout_set")
    assert meta["holdout_drops"] == [vdrop] and meta["by_drop"] == {vdrop: len(holdout)}
    assert "support" in (api.home / "finetuning" / "tasks.yaml").read_text()
    assert (api.home / "tasks" / "support" / "data").is_dir() and not (api.home / "finetuning" / "tasks").exists()

    events = list(reversed(c.fine_tuning.jobs.list_events(job.id, limit=1000).data))
    messages = [e.message for e in events]
    assert messages[0].startswith("Created fine-tuning job") and messages[-1] == "The job has successfully completed"
    assert any(m.startswith(f"{train}: ") and "usable" in m for m in messages)
    assert any(m.startswith("ok lora_adapter") for m in messages) and any("registered_model" in m for m in messages)
    (checked,) = [e.data for e in events if e.data and "kept" in e.data and e.data["rows"] == 48]
    steps = 2 * -(-checked["kept"] // 8)  # two passes over the usable rows in batches of 8
    assert 40 < checked["kept"] <= 48
    losses = [e.data for e in events if e.type == "metrics"]
    assert losses and losses[-1]["total_steps"] == steps and all(d["train_loss"] > 0 for d in losses[:-1])
    page = c.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more
    assert c.fine_tuning.jobs.list_events(job.id, after=page.data[-1].id, limit=1).data[0].id != page.data[-1].id

    ckpts = c.fine_tuning.jobs.checkpoints.list(job.id).data
    numbers = [ck.step_number for ck in ckpts]
    assert numbers[0] == steps and numbers == sorted(numbers, reverse=True) and len(numbers) >= 2, numbers
    assert all(ck.metrics.step == ck.step_number and ck.metrics.train_loss > 0 for ck in ckpts)
    assert ckpts[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-{steps}"

    answer = c.chat.completions.create(model=done.fine_tuned_model, max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": "refund order ORD-100001 please"}])
    assert answer.model == done.fine_tuned_model and answer.system_fingerprint == "support/1"
    assert done.fine_tuned_model in [m.id for m in c.models.list().data]
    assert c.fine_tuning.jobs.list(limit=1).data[0].id == job.id

    # deleting the training file erases its rows from the task that trained on it
    assert c.files.delete(train).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(train)
    requests = api.home / "erasure" / "requests.jsonl"  # the home's: every task's
    (request,) = [json.loads(line) for line in requests.read_text().splitlines()]
    assert len(request["rows"]) == 48 and {r["drop"] for r in request["rows"]} == {f"{train}.jsonl"}


def test_a_dpo_job_trains_sft_then_dpo_and_registers_the_dpo_model(api):
    c = api.client
    train, valid = _pairs(api, "prefs_24.jsonl", 24), _pairs(api, "prefs_valid_12.jsonl", 12, start=300)
    job = c.fine_tuning.jobs.create(model="builtin:tiny", training_file=train, validation_file=valid,
                                    suffix="support-dpo", method={"type": "dpo", "dpo": {"hyperparameters": {
                                        "n_epochs": 2, "batch_size": 8, "beta": 0.2}}})
    done = _wait(c, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    hp = done.method.dpo.hyperparameters
    assert done.method.type == "dpo" and (hp.n_epochs, hp.batch_size, hp.beta) == (2, 8, 0.2)
    extra = done.model_extra["ft_pipeline"]
    assert [_dagster_status(api.home, r) for r in extra["dagster_run_ids"]] == ["SUCCESS"] * 3  # 2 drops, train
    # SFT on the prompts with their preferred outputs, then DPO from it; the version registered is DPO's
    lora, pref = (_metadata(api.home, "support-dpo", a) for a in ("lora_adapter", "preference_adapter"))
    reg = _metadata(api.home, "support-dpo", "registered_model")
    assert pref["trained"] is True and pref["dpo_config"]["beta"] == 0.2 and reg["training_stage"] == "dpo"
    events = list(reversed(c.fine_tuning.jobs.list_events(job.id, limit=1000).data))
    (checked,) = [e.data for e in events if e.data and "kept" in e.data and e.data["rows"] == 24]
    dpo_steps = 2 * -(-checked["kept"] // 8)
    assert pref["global_step"] == dpo_steps and pref["pairs"] == checked["kept"]
    assert done.trained_tokens == lora["train_tokens"] + pref["train_tokens"] and pref["train_tokens"] > 0
    metrics = [e.data for e in events if e.type == "metrics"]
    dpo = [d for d in metrics if d["stage"] == "dpo"]
    assert dpo and dpo[-1]["total_steps"] == dpo_steps and any("reward_margin" in d for d in dpo)
    assert [d["stage"] for d in metrics] == ["sft"] * (len(metrics) - len(dpo)) + ["dpo"] * len(dpo)
    ckpts = [ck.step_number for ck in c.fine_tuning.jobs.checkpoints.list(job.id).data]
    total = lora["global_step"] + dpo_steps  # DPO's steps counted after SFT's
    assert ckpts[0] == total and any(lora["global_step"] < n < total for n in ckpts), ckpts
    # the validation file is the holdout of the split and of the pairs; the training file's pairs are all train
    data = api.home / "tasks" / "support-dpo" / "data"
    assert {d for d, _ in _lines(data / "split" / "holdout.jsonl")} == {f"{valid}.jsonl"}
    assert {d for d, _ in _lines(data / "preference_pairs" / "holdout.jsonl")} == {f"{valid}.jsonl"}
    assert _lines(data / "preference_pairs" / "train.jsonl") == [(f"{train}.jsonl", n) for n in range(1, 25)]
    assert (api.tmp / "raw" / "support-dpo" / "preferences" / f"{train}.jsonl").is_file()

    answer = c.chat.completions.create(model=done.fine_tuned_model, max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": "refund order ORD-100001 please"}])
    assert answer.model == done.fine_tuned_model and answer.system_fingerprint == "support-dpo/1"
    # deleting its training file erases its pairs and the SFT rows made from them
    assert c.files.delete(train).deleted
    requests = [json.loads(line) for line in (api.home / "erasure" / "requests.jsonl").read_text().splitlines()]
    erased = [{r["drop"] for r in q["rows"]} for q in requests if q["rows"][0]["drop"].endswith(f"{train}.jsonl")]
    assert erased == [{f"{train}.jsonl"}, {f"preferences/{train}.jsonl"}], erased


def test_a_second_job_of_a_task_queues_and_cancel_ends_both_cancelled(api):
    c = api.client
    # other rows than the first test's: its deleted file's rows are erased from every task of the home
    train = _slice(api, "triage_48.jsonl", 48, start=48)
    hp = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 8}}}
    first = c.fine_tuning.jobs.create(model="builtin:tiny", training_file=train, suffix="triage", method=hp)
    _wait(c, first.id, lambda j: j.estimated_finish is not None or j.status in ("failed", "succeeded"))
    second = c.fine_tuning.jobs.create(model="builtin:tiny", training_file=train, suffix="triage", method=hp)
    queued = _wait(c, second.id, lambda j: j.status != "validating_files")
    assert queued.status == "queued" and c.fine_tuning.jobs.retrieve(first.id).status == "running"

    cancelled = c.fine_tuning.jobs.cancel(first.id)
    assert cancelled.status == "cancelled" and cancelled.fine_tuned_model is None
    run_ids = cancelled.model_extra["ft_pipeline"]["dagster_run_ids"]
    assert _dagster_status(api.home, run_ids[-1]) == "CANCELED"
    assert c.fine_tuning.jobs.list_events(first.id, limit=1).data[0].message.startswith("Fine-tuning job cancelled")
    # the queued job took the task's lock when the first let go; cancel it wherever it is
    assert c.fine_tuning.jobs.cancel(second.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as e:
        c.fine_tuning.jobs.cancel(first.id)
    assert e.value.body["code"] == "invalid_request"


def test_a_file_that_fails_validation_fails_its_job_with_the_reasons(api):
    c = api.client
    bad = api.tmp / "no_answers.jsonl"
    bad.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"}]}) + "\n"
                           for i in range(12)))
    f = c.files.create(file=bad.open("rb"), purpose="fine-tune")  # JSONL that parses: accepted at upload
    job = c.fine_tuning.jobs.create(model="builtin:tiny", training_file=f.id)
    done = _wait(c, job.id, lambda j: j.status in ("succeeded", "failed", "cancelled"), timeout=300)
    assert done.status == "failed" and done.error.code == "invalid_training_file"
    assert done.error.param == "training_file" and "0 usable example(s) of 12" in done.error.message
    assert "line 1:" in done.error.message and done.model_extra["ft_pipeline"]["dagster_run_ids"] == []
    last = c.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert last.level == "error" and last.data["by_reason"] and len(last.data["quarantined"]) == 12


def _refused(call, status: int, code: str, param=None):
    with pytest.raises(openai.APIStatusError) as e:
        call()
    assert e.value.status_code == status and e.value.body["code"] == code, e.value.body
    assert e.value.body["param"] == param and e.value.body["message"]
    return e.value.body


def test_bad_input_is_refused_with_openais_error_and_nothing_is_created(api):
    c = api.client
    files, jobs = len(c.files.list().data), len(c.fine_tuning.jobs.list(limit=100).data)
    big = api.tmp / "big.jsonl"
    big.write_bytes(DEMO.read_bytes() * 2)
    _refused(lambda: c.files.create(file=big.open("rb"), purpose="fine-tune"), 413, "file_too_large", "file")
    latin = api.tmp / "latin1.jsonl"
    latin.write_bytes("".join(json.dumps({"messages": [{"role": "user", "content": "caf\u00e9 cr\u00e8me"},
                                                       {"role": "assistant", "content": "d\u00e9j\u00e0"}]},
                                         ensure_ascii=False) + "\n" for _ in range(12)).encode("latin-1"))
    body = _refused(lambda: c.files.create(file=latin.open("rb"), purpose="fine-tune"), 400, "invalid_file_format",
                    "file")
    assert "UTF-8" in body["message"] or "utf-8" in body["message"]
    csv = api.tmp / "tickets.jsonl"
    csv.write_text("text,label\nhello,greeting\n")
    _refused(lambda: c.files.create(file=csv.open("rb"), purpose="fine-tune"), 400, "invalid_file_format", "file")
    _refused(lambda: c.files.create(file=("notes.txt", b"hello"), purpose="fine-tune"), 400, "invalid_file_format",
             "file")
    _refused(lambda: c.files.create(file=DEMO.open("rb"), purpose="fine-tuning"), 400, "invalid_value", "purpose")
    assert len(c.files.list().data) == files
    assert not list((api.home / "finetuning" / "files").glob(".incoming-*"))

    batch = c.files.create(file=("requests.jsonl", b'{"custom_id": "1"}\n'), purpose="batch")
    good = _slice(api, "ok_20.jsonl", 20)
    create = c.fine_tuning.jobs.create
    _refused(lambda: create(model="builtin:tiny", training_file=batch.id), 400, "invalid_file_purpose",
             "training_file")
    _refused(lambda: create(model="builtin:tiny", training_file="file-nope"), 404, "file_not_found", "training_file")
    _refused(lambda: create(model="gpt-4o-mini-2024-07-18", training_file=good), 400, "model_not_available", "model")
    for name, value in (("n_epochs", 0), ("n_epochs", 2.5), ("batch_size", 1000), ("learning_rate_multiplier", -1),
                        ("n_epochs", "many")):
        method = {"type": "supervised", "supervised": {"hyperparameters": {name: value}}}
        _refused(lambda m=method: create(model="builtin:tiny", training_file=good, method=m), 400, "invalid_value",
                 f"method.supervised.hyperparameters.{name}")
    _refused(lambda: create(model="builtin:tiny", training_file=good, method={
        "type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}), 400, "unknown_parameter",
        "method.supervised.hyperparameters.beta")
    _refused(lambda: create(model="builtin:tiny", training_file=good, method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}), 400, "invalid_value",
        "method.dpo.hyperparameters.beta")
    _refused(lambda: create(model="builtin:tiny", training_file=good, validation_file=good), 400, "invalid_value",
             "validation_file")
    _refused(lambda: create(model="builtin:tiny", training_file=good, suffix="Has Spaces"), 400, "invalid_value",
             "suffix")
    body = _refused(lambda: create(model="builtin:tiny", training_file=good, suffix="routing"), 400,
                    "invalid_value", "suffix")  # a task of tasks.yaml is not a job's
    assert "routing" in body["message"]
    _refused(lambda: create(model="builtin:tiny", training_file=good, method={"type": "reinforcement"}), 400,
             "invalid_value", "method.type")
    assert len(c.fine_tuning.jobs.list(limit=100).data) == jobs
    _refused(lambda: c.fine_tuning.jobs.retrieve("ftjob-nope"), 404, "not_found")
    _refused(lambda: c.files.retrieve("file-nope"), 404, "not_found")
    _refused(lambda: c.chat.completions.create(model="ft:builtin:tiny::ftjob-nope", messages=[
        {"role": "user", "content": "hi"}]), 404, "model_not_found", "model")
