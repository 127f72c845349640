"""The fine-tuning API's framework-free parts: a job request checked parameter by parameter, "auto" hyperparameters
resolved against the preset, a file validated by the data layer with the quarantine's reasons, the store's paging
and its terminal statuses."""

import json

import pytest

from ft_pipeline.finetuning import job_files, jobs, progress, validation
from ft_pipeline.finetuning.store import FineTuningStore, NotFound

FILES = {"file-ok": {"purpose": "fine-tune"}, "file-batch": {"purpose": "batch"}}


def _lookup(file_id):
    if file_id not in FILES:
        raise LookupError(file_id)
    return FILES[file_id]


def _error(body) -> jobs.RequestError:
    with pytest.raises(jobs.RequestError) as e:
        jobs.check_create(body, _lookup)
    return e.value


def test_a_request_is_checked_parameter_by_parameter():
    ok = {"model": "builtin:tiny", "training_file": "file-ok"}
    got = jobs.check_create({**ok, "suffix": "support", "method": {
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}, _lookup)
    assert got["method"]["supervised"]["hyperparameters"] == {"n_epochs": 3, "batch_size": "auto",
                                                              "learning_rate_multiplier": "auto"}
    legacy = jobs.check_create({**ok, "hyperparameters": {"batch_size": 4}}, _lookup)
    assert legacy["method"]["supervised"]["hyperparameters"]["batch_size"] == 4 and legacy["seed"] == 0
    cases = [({"training_file": "file-ok"}, 400, "model", "missing_required_parameter"),
             ({"model": "davinci-002", "training_file": "file-ok"}, 400, "model", "model_not_available"),
             ({**ok, "training_file": "file-batch"}, 400, "training_file", "invalid_file_purpose"),
             ({**ok, "validation_file": "file-gone"}, 404, "validation_file", "file_not_found"),
             ({**ok, "suffix": "x" * 41}, 400, "suffix", "invalid_value"),
             ({**ok, "suffix": "routing"}, 400, "suffix", "invalid_value"),  # a task of tasks.yaml
             ({**ok, "suffix": "default"}, 400, "suffix", "invalid_value"),
             ({**ok, "suffix": "tasks"}, 400, "suffix", "invalid_value"),  # reserved: the home's tasks/
             ({**ok, "seed": -1}, 400, "seed", "invalid_value"),
             ({**ok, "seed": True}, 400, "seed", "invalid_value"),
             ({**ok, "metadata": {"k": 1}}, 400, "metadata", "invalid_value"),
             ({**ok, "temperature": 1}, 400, "temperature", "unknown_parameter"),
             ({**ok, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 51}}}}, 400,
              "method.supervised.hyperparameters.n_epochs", "invalid_value"),
             ({**ok, "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": True}}}},
              400, "method.supervised.hyperparameters.batch_size", "invalid_value"),
             ({**ok, "method": {"type": "supervised"}, "hyperparameters": {}}, 400, "hyperparameters",
              "invalid_value"),
             ({**ok, "validation_file": "file-ok"}, 400, "validation_file", "invalid_value")]
    for body, status, param, code in cases:
        e = _error(body)
        assert (e.status, e.param, e.code) == (status, param, code), (body, e.message)
    dpo = jobs.check_create({**ok, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}}, _lookup)
    assert dpo["kind"] == "preference" and dpo["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.2}}}


def test_auto_hyperparameters_resolve_against_the_preset():
    preset = {"lora_adapter": {"config": {"max_steps": 400, "per_device_train_batch_size": 32,
                                          "learning_rate": 0.003}}}
    auto = {"type": "supervised", "supervised": {"hyperparameters": dict.fromkeys(
        ("n_epochs", "batch_size", "learning_rate_multiplier"), "auto")}}
    hp, over = jobs.resolved(auto, preset, 1000)
    assert over == {"lora_adapter": {"max_steps": 400, "per_device_train_batch_size": 32, "learning_rate": 0.003}}
    assert hp == {"n_epochs": 13, "batch_size": 32, "learning_rate_multiplier": 1.0}  # 400 steps of 32 rows
    given = {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}}}
    hp, over = jobs.resolved(given, preset, 41)
    assert over["lora_adapter"] == {"max_steps": 12, "per_device_train_batch_size": 8, "learning_rate": 0.0015}
    assert hp == {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.5}
    # a DPO job's hyperparameters are preference_adapter's (its SFT stage trains as the preset says)
    pref = {**preset, "preference_adapter": {"config": {"max_steps": 20, "per_device_train_batch_size": 16,
                                                        "learning_rate": 0.001, "beta": 0.1}}}
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 8,
                                                      "learning_rate_multiplier": "auto", "beta": "auto"}}}
    hp, over = jobs.resolved(dpo, pref, 20)
    assert over == {"preference_adapter": {"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 0.001,
                                           "beta": 0.1}}
    assert hp == {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 1.0, "beta": 0.1}


def test_a_file_is_validated_by_the_data_layer(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(good)] * 10 + ['{"messages": [{"role": "user", "content": "x"}]}',
                                                         "{not json"]) + "\n")
    v = validation.parse(path)
    assert (v.rows, v.kept, v.format) == (12, 10, "openai_chat") and v.problem() is None
    assert [q["line"] for q in v.quarantined] == [11, 12]
    assert set(v.by_reason) == {"no_assistant_message", "malformed_json"}
    assert "line 11:" in v.problem(minimum=11) and "10 usable example(s) of 12" in v.problem(minimum=11)
    for name, data in (("a.jsonl", b""), ("b.jsonl", b"a,b\n1,2\n"), ("c.txt", b"{}")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(validation.InvalidFile, match="^Invalid file format: ") as e:
            validation.parse(tmp_path / name)
        assert str(tmp_path) not in str(e.value)


def test_store_pages_newest_first_and_keeps_terminal_statuses(tmp_path):
    store = FineTuningStore(tmp_path)
    method = {"type": "supervised", "supervised": {"hyperparameters": {}}}
    for i in range(5):
        store.add_job({"id": f"ftjob-{i}", "created_at": 100 + i, "model": "builtin:tiny", "task": "t",
                       "suffix": None, "training_file": "file-x", "validation_file": None, "seed": 0,
                       "metadata": None, "method": method, "hyperparameters": {}, "status": "validating_files"})
    page, more = store.jobs(None, 2)
    assert [j["id"] for j in page] == ["ftjob-4", "ftjob-3"] and more
    page, more = store.jobs("ftjob-3", 10)
    assert [j["id"] for j in page] == ["ftjob-2", "ftjob-1", "ftjob-0"] and not more
    assert store.finish("ftjob-1", "cancelled")["status"] == "cancelled"
    assert store.finish("ftjob-1", "failed", {"code": "x", "message": "y", "param": None})["status"] == "cancelled"
    for i in range(3):
        store.add_event("ftjob-0", f"line {i}")
    page, more = store.events("ftjob-0", None, 2)
    assert [e["message"] for e in page] == ["line 2", "line 1"] and more
    assert [e["message"] for e in store.events("ftjob-0", page[-1]["id"], 5)[0]] == ["line 0"]
    with pytest.raises(NotFound):
        store.job("ftjob-9")
    store.add_checkpoint("ftjob-0", 5, 1, progress.metrics([{"step": 2, "loss": 3.0}, {"step": 6, "loss": 1.0}], 5))
    assert store.checkpoints("ftjob-0") == [{"step": 5, "created_at": 1, "metrics": {"step": 5.0, "train_loss": 3.0}}]


def test_a_server_nobody_asks_to_fine_tune_creates_no_store(tmp_path):
    from ft_pipeline.serving.finetuning_routes import FineTuning
    from ft_pipeline.serving.models import ModelNotFound

    ft = FineTuning(root=tmp_path / "finetuning")
    assert ft.listing() == []  # what GET /v1/models adds
    with pytest.raises(ModelNotFound, match="does not exist"):
        ft.served("ft:builtin:tiny::ftjob-x")
    assert not (tmp_path / "finetuning").exists()


def test_a_jobs_files_become_its_tasks_drops(tmp_path):
    """Supervised: each file a drop, the validation file's the holdout. DPO: each file a preference drop and an SFT
    drop of its prompts with their preferred outputs, line for line (a row that is no pair stays, for cleaning to
    quarantine at its line)."""
    pair = {"input": {"messages": [{"role": "user", "content": "Where is order 7?"}]},
            "preferred_output": [{"role": "assistant", "content": "In transit."}],
            "non_preferred_output": [{"role": "assistant", "content": "No idea."}]}
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(pair) + "\n\n" + json.dumps({"input": {"messages": []}}) + "\n{oops\n")
    rows = [json.loads(x) if x.startswith('{"') else x for x in job_files.sft_rows(pairs).decode().split("\n")]
    assert rows == [{"messages": [*pair["input"]["messages"], *pair["preferred_output"]]}, "",
                    {"input": {"messages": []}}, "{oops", ""]
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}))
    raw = tmp_path / "raw" / "task"
    (raw / "stale.jsonl").parent.mkdir(parents=True)
    (raw / "stale.jsonl").write_text("{}")  # a former job's file: not this job's
    laid = job_files.lay_out(raw, {"file-t": chat, "file-v": chat}, "supervised", "file-v")
    assert (laid.sft, laid.holdout, laid.preference) == (["file-t.jsonl", "file-v.jsonl"], ["file-v.jsonl"], [])
    assert sorted(p.name for p in raw.iterdir()) == ["file-t.jsonl", "file-v.jsonl"]
    assert (raw / "file-v.jsonl").read_bytes() == chat.read_bytes()
    laid = job_files.lay_out(raw, {"file-p": pairs}, "dpo")
    assert (laid.sft, laid.holdout, laid.preference) == (["file-p.jsonl"], [], ["file-p.jsonl"])
    assert laid.erasable == ["file-p.jsonl", "preferences/file-p.jsonl"]
    assert (raw / "preferences" / "file-p.jsonl").read_bytes() == pairs.read_bytes()
    assert (raw / "file-p.jsonl").read_bytes() == job_files.sft_rows(pairs)
    assert job_files.holdout_drops(None) == []


def test_a_dpo_jobs_gate_candidate_is_the_dpo_model_even_when_sft_scores_higher():
    from ft_pipeline.evaluation.scoring import pick_candidate

    metrics = {"tuned": {"field_accuracy": 0.5}, "dpo": {"field_accuracy": 0.25}, "base": {"field_accuracy": 0.0}}
    assert pick_candidate(metrics, "field_accuracy")[0] == "tuned"  # best: DPO only when it beats SFT
    assert pick_candidate(metrics, "field_accuracy", candidate="dpo")[0] == "dpo"
    assert pick_candidate({"tuned": metrics["tuned"]}, "field_accuracy", candidate="dpo")[0] == "tuned"  # none
