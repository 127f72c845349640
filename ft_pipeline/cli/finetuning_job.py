"""`python -m ft_pipeline.cli.finetuning_job JOB_ID`: the process that runs one fine-tuning job, started by the
server's `POST /v1/fine_tuning/jobs` (serving/finetuning_routes.py).

It validates the job's files with the data layer (`validating_files`; a file that fails fails the job with the
quarantine's reasons), takes its task's run lock (`queued` while another job of the task holds it), then
(`running`) runs the task's graph on the server's Dagster instance, as `ft-pipeline run --force` does: the ingest
run of the job's training file (the task's only drop) and train_and_register, which trains, evaluates and
registers the task's model. Each Dagster run is tagged with the job id and recorded on the job before it starts.
The run's stage lines and training losses become the job's events; its end sets the job's status from the run's.

The job's task is a task of the pipeline (ft_pipeline/tasks.py), recorded in `<home>/finetuning/tasks.yaml` with
the job's preset: its drop the job's training file alone in `<raw_dir>/<task>/`, its files under
`<home>/tasks/<task>/`, its runs those of `ft-pipeline run --task <task>` (asset keys `<task>/...`, partitions
`drops_<task>`, its own registered model), on the home's one Dagster instance, MLflow store, run lock and gpu pool.
SIGTERM (the cancel endpoint) is Ctrl-C: the run stops as `ft-pipeline run` stops (checkpoints kept, slots freed),
and is then reported cancelled in Dagster."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

import yaml

from ft_pipeline import settings, tasks
from ft_pipeline.cli.main import _failure_message, prepare_instance_home
from ft_pipeline.finetuning import jobs as ft_jobs
from ft_pipeline.finetuning import progress, validation
from ft_pipeline.finetuning.store import FineTuningStore
from ft_pipeline.runs import console
from ft_pipeline.runs import control as runs

JOB_TAG = "ft_pipeline/fine_tuning_job"
# The evaluation gate reports but does not hold back a job's model: OpenAI registers what a job trains.
_GATE = {"min_json_valid": 0.0, "min_gain_over_base": -1000.0, "max_loss_vs_champion": 1000.0,
         "max_retention_kl": None, "must_beat_prompting": False}


class JobEvents(console.StageHandler):
    """The stage lines of the job's runs as its events, and each training log line as a `metrics` event."""

    def __init__(self, store: FineTuningStore, job_id: str, task_home: Path):
        super().__init__(stream=sys.stdout)
        self.store, self.job_id, self.task_home, self.since = store, job_id, task_home, time.time()
        self.last: dict = {}

    def _print(self, line: str) -> None:
        level = "error" if line.lstrip().startswith("FAIL") else "warn" if line.lstrip().startswith("warn") else "info"
        self.store.add_event(self.job_id, " ".join(line.split()), level=level)

    def _message(self, msg: str) -> None:
        if m := console._STEP.match(msg):
            step, total = int(m.group(1)), int(m.group(2))
            data = {"step": step, "total_steps": total}
            if m.group(3) != "None":
                data["train_loss"] = float(m.group(3))
            if eta := msg.rsplit("eta=", 1)[-1].rstrip("s"):
                try:  # when training will end: the trainer's own estimate, from its steps so far
                    self.store.update_job(self.job_id, estimated_finish=int(time.time() + float(eta)))
                except ValueError:
                    pass
            self.store.add_event(self.job_id, f"Step {step}/{total}: training loss={data.get('train_loss')}",
                                 type="metrics", data=data)
            # the last loss logged (the trainer's closing line at the last step carries none)
            self.last = {**self.last, "step": float(step),
                         **({"train_loss": data["train_loss"]} if "train_loss" in data else {})}
            for n, written, metrics in progress.found(self.task_home, self.since):
                self.store.add_checkpoint(self.job_id, n, written, metrics)
        elif msg.startswith(("evaluated ", "warm start: ", "no warm start: ")):
            self._print(msg)


def _preset(job: dict, examples: int) -> tuple[dict, dict]:
    """The job's preset (the CPU preset of its base model, overlaid with $FT_PIPELINE_FINETUNING_PRESET's ops)
    and its resolved hyperparameters."""
    base = "cpu_tiny.yaml" if job["model"].startswith("builtin:") else "cpu_smollm2.yaml"
    ops = yaml.safe_load((settings.REPO_ROOT / "configs" / base).read_text())["ops"]
    if extra := os.environ.get("FT_PIPELINE_FINETUNING_PRESET"):
        for op, entry in (yaml.safe_load(Path(extra).read_text()).get("ops") or {}).items():
            ops.setdefault(op, {}).setdefault("config", {}).update((entry or {}).get("config") or {})

    def config(op):
        return ops.setdefault(op, {}).setdefault("config", {})

    config("base_model")["base_model"] = job["model"]
    hp, over = ft_jobs.resolved(job["method"], ops, examples)
    for op, values in over.items():
        config(op).update(values)
    config("lora_adapter")["seed"] = job["seed"]
    config("evaluation_report_beats_base_and_champion").update(_GATE)
    config("preference_adapter")["enabled"] = job["method"]["type"] == "dpo"
    return {"ops": ops}, hp


def main(job_id: str) -> int:
    store = FineTuningStore(settings.home() / "finetuning")
    runs.sigterm_as_interrupt()
    state: dict = {}
    try:
        return _run(store, store.job(job_id), state)
    except KeyboardInterrupt:
        if state.get("instance") is not None and state.get("run_id"):
            run = state["instance"].get_run_by_id(state["run_id"])
            if run is not None:
                state["instance"].report_run_canceled(run, f"fine-tuning job {job_id} was cancelled")
        store.add_event(job_id, "Fine-tuning job cancelled" + (f" (Dagster run {state['run_id']} cancelled; its "
                                                               "checkpoints are kept)" if state.get("run_id") else ""))
        store.finish(job_id, "cancelled")
        return 130
    except Exception as e:
        traceback.print_exc()  # into the job's log file; the job carries the one line
        store.add_event(job_id, f"Fine-tuning job failed: {type(e).__name__}: {e}", level="error")
        store.finish(job_id, "failed", {"code": "server_error", "message": f"{type(e).__name__}: {e}", "param": None})
        return 1


def _fail(store: FineTuningStore, job_id: str, code: str, message: str, param: str | None = None,
          data: dict | None = None) -> int:
    store.add_event(job_id, message, level="error", data=data)
    store.finish(job_id, "failed", {"code": code, "message": message, "param": param})
    return 1


def _run(store: FineTuningStore, job: dict, state: dict) -> int:
    job_id = job["id"]
    kind = "preference" if job["method"]["type"] == "dpo" else "chat"
    checked = {}
    for key in ("training_file", "validation_file"):
        if job[key] is None:
            continue
        store.add_event(job_id, f"Validating {key.replace('_', ' ')}: {job[key]}")
        try:
            v = validation.parse(Path(store.file(job[key])["path"]), kind)
        except (validation.InvalidFile, LookupError) as e:
            return _fail(store, job_id, f"invalid_{key}", f"{job[key]}: {e}", key)
        if (why := v.problem()) is not None:
            return _fail(store, job_id, f"invalid_{key}", f"{job[key]}: {why}", key,
                         {"quarantined": v.quarantined[:50], "by_reason": v.by_reason})
        store.add_event(job_id, f"{job[key]}: {v.kept} of {v.rows} examples usable ({v.format})"
                        + (f"; {len(v.quarantined)} quarantined: {v.by_reason}" if v.quarantined else ""),
                        data={"rows": v.rows, "kept": v.kept, "by_reason": v.by_reason})
        checked[key] = v
    preset, hp = _preset(job, checked["training_file"].kept)
    method = {**job["method"], job["method"]["type"]: {"hyperparameters": hp}}
    store.update_job(job_id, status="queued", method=method, hyperparameters=hp)
    store.add_event(job_id, "Files validated; job queued")

    prepare_instance_home()  # the home's Dagster instance (DAGSTER_HOME), as `ft-pipeline run` does
    os.environ["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri()
    # the home's run lock: one job (or `ft-pipeline run`) at a time; the later ones stay `queued`
    with runs.home_lock(settings.home(), log=lambda line: store.add_event(job_id, line)):
        return _train(store, job, preset, state)


def _train(store: FineTuningStore, job: dict, preset: dict, state: dict) -> int:
    job_id, home = job["id"], settings.home()
    preset_path = store.root / "jobs" / f"{job_id}.yaml"  # written once the task's jobs are known
    task = tasks.Task(job["task"], preset=str(preset_path), description=f"fine-tuning job {job_id}")
    tasks.add_job_task(task)  # before the definitions are built: they have the task's graph
    task_home, raw = task.home(home), task.raw_dir(settings.raw_dir())
    store.update_job(job_id, status="running")
    store.add_event(job_id, f"Fine-tuning job started: task {task.name} (drops {raw}, files {task_home})")
    shutil.rmtree(raw, ignore_errors=True)  # the task trains on exactly this job's file
    raw.mkdir(parents=True)
    shutil.copyfile(store.file(job["training_file"])["path"], raw / f"{job['training_file']}.jsonl")

    import uuid

    import dagster as dg

    from ft_pipeline.cli import presets
    from ft_pipeline.data.drop_files import drop_key
    from ft_pipeline.definitions import defs  # built now: they have the job's task
    from ft_pipeline.defs.jobs import job_name
    from ft_pipeline.defs.partitions import drops_for

    ingest, train = (defs.resolve_job_def(job_name(task.name, j)) for j in ("ingest_drop", "train_and_register"))
    # the preset's ops that are the task's (the base preset's traffic ops are the default task's alone)
    ops = {n.name for j in (ingest, train) for n in j.graph.node_defs}
    preset_path.parent.mkdir(parents=True, exist_ok=True)
    preset_path.write_text(yaml.safe_dump({"ops": {k: v for k, v in preset["ops"].items() if k in ops}},
                                          sort_keys=False))
    loaded = presets.load(preset_path, [ingest, train])
    console.stage_lines_only()
    log = logging.getLogger("ft_pipeline.stages")
    events = JobEvents(store, job_id, task_home)
    log.addHandler(events)
    instance = state["instance"] = dg.DagsterInstance.get()
    for line in runs.reap(instance, home):
        store.add_event(job_id, f"stale run: {line}", level="warn")
    drop, drops = drop_key(f"{job['training_file']}.jsonl"), drops_for(task.name)
    if drop not in instance.get_dynamic_partitions(drops.name):
        instance.add_dynamic_partitions(drops.name, [drop])
    for name, graph, kw in ((ingest.name, ingest, {"partition_key": drop}), (train.name, train, {})):
        run_id = state["run_id"] = str(uuid.uuid4())
        store.update_job(job_id, dagster_run_ids=store.job(job_id)["dagster_run_ids"] + [run_id])
        store.add_event(job_id, f"Dagster run {run_id} ({name}) started", data={"dagster_run_id": run_id})
        res = runs.execute(graph, instance, home, log=lambda line: store.add_event(job_id, line),
                           run_id=run_id, tags={JOB_TAG: job_id, "ft_pipeline/task": task.name},
                           run_config=presets.run_config(loaded, graph), **kw)
        status = instance.get_run_by_id(run_id).status.value  # what Dagster recorded, not our reading of it
        store.add_event(job_id, f"Dagster run {run_id} ({name}): {status}", data={"dagster_run_id": run_id})
        if not res.success:
            return _fail(store, job_id, "run_failed", f"Dagster run {run_id} ({name}) {status}: "
                                                      f"{_failure_message(res)}")

    def metadata(asset: str) -> dict:
        event = instance.get_latest_materialization_event(dg.AssetKey([*task.key_prefix, asset]))
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}

    reg, lora = metadata("registered_model"), metadata("lora_adapter")
    ft_model = ft_jobs.fine_tuned_model(job["model"], job["suffix"], job_id)
    # the last checkpoint is the trained model itself, the registered version
    store.add_checkpoint(job_id, int(lora["global_step"]), int(time.time()),
                         {**events.last, "step": float(lora["global_step"])})
    store.finish(job_id, "succeeded", fine_tuned_model=ft_model, registered_model=reg["registered_model"],
                 version=str(reg["version"]), trained_tokens=int(lora["train_tokens"]))
    store.add_event(job_id, f"New fine-tuned model created: {ft_model} ({reg['registered_model']} version "
                            f"{reg['version']})")
    store.add_event(job_id, "The job has successfully completed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
