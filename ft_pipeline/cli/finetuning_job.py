"""`python -m ft_pipeline.cli.finetuning_job JOB_ID`: the process that runs one fine-tuning job, started by the
server's `POST /v1/fine_tuning/jobs` (serving/finetuning_routes.py).

It validates the job's files with the data layer (`validating_files`; a file that fails fails the job with the
quarantine's reasons), takes its task's run lock (`queued` while another job of the task holds it), then
(`running`) runs the task's graph on the server's Dagster instance, as `ft-pipeline run --force` does: the ingest
run of each of the job's drops (finetuning/job_files.py: the training file, the validation file as the holdout; a
DPO job's files also as preference drops) and train_and_register, which trains (SFT, then DPO for a DPO job),
evaluates and registers the task's model. Each Dagster run is tagged with the job id and recorded on the job
before it starts. The run's stage lines and training losses become the job's events; its end sets the job's status
from the run's.

The job's task is a task of the pipeline (ft_pipeline/tasks.py), recorded in `<home>/finetuning/tasks.yaml` with
the job's preset: its drops the job's files alone in `<raw_dir>/<task>/`, its files under
`<home>/tasks/<task>/`, its runs those of `ft-pipeline run --task <task>` (asset keys `<task>/...`, partitions
`drops_<task>`, its own registered model), on the home's one Dagster instance, MLflow store, run lock and gpu pool.
SIGTERM (the cancel endpoint) is Ctrl-C: the run stops as `ft-pipeline run` stops (checkpoints kept, slots freed),
and is then reported cancelled in Dagster."""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

import yaml

from ft_pipeline import settings, tasks
from ft_pipeline.cli.main import _failure_message, prepare_instance_home
from ft_pipeline.finetuning import job_files, progress, validation
from ft_pipeline.finetuning import jobs as ft_jobs
from ft_pipeline.finetuning.store import FineTuningStore
from ft_pipeline.runs import console
from ft_pipeline.runs import control as runs

JOB_TAG = "ft_pipeline/fine_tuning_job"
# The evaluation gate reports but does not hold back a job's model: OpenAI registers what a job trains.
_GATE = {"min_json_valid": 0.0, "min_gain_over_base": -1000.0, "max_loss_vs_champion": 1000.0,
         "max_retention_kl": None, "must_beat_prompting": False}


class JobEvents(console.StageHandler):
    """The stage lines of the job's runs as its events, and each training log line (SFT's, then DPO's) as a
    `metrics` event. DPO's steps and checkpoints are numbered after SFT's: one job, one count of steps."""

    def __init__(self, store: FineTuningStore, job_id: str, task_home: Path):
        super().__init__(stream=sys.stdout)
        self.store, self.job_id, self.task_home, self.since = store, job_id, task_home, time.time()
        self.last: dict = {}
        self.sft_steps = 0  # SFT's total steps, once its lines came: the offset of DPO's

    def _print(self, line: str) -> None:
        level = "error" if line.lstrip().startswith("FAIL") else "warn" if line.lstrip().startswith("warn") else "info"
        self.store.add_event(self.job_id, " ".join(line.split()), level=level)

    def _message(self, msg: str) -> None:
        if m := console._STEP.match(msg):
            step, total, dpo = int(m.group(1)), int(m.group(2)), " margin=" in msg
            data = {"step": step, "total_steps": total, "stage": "dpo" if dpo else "sft"}
            if m.group(3) != "None":
                data["train_loss"] = float(m.group(3))
            if dpo and (margin := _number(msg, "margin=")) is not None:
                data["reward_margin"] = margin
            if not dpo:
                self.sft_steps = total
            if eta := msg.rsplit("eta=", 1)[-1].rstrip("s"):
                try:  # when training will end: the trainer's own estimate, from its steps so far
                    self.store.update_job(self.job_id, estimated_finish=int(time.time() + float(eta)))
                except ValueError:
                    pass
            what = f"{'DPO step' if dpo else 'Step'} {step}/{total}: training loss={data.get('train_loss')}"
            if "reward_margin" in data:
                what += f", reward margin={data['reward_margin']}"
            self.store.add_event(self.job_id, what, type="metrics", data=data)
            # the last loss logged (the trainer's closing line at the last step carries none)
            offset = self.sft_steps if dpo else 0
            self.last = {**self.last, "step": float(offset + step),
                         **({"train_loss": data["train_loss"]} if "train_loss" in data else {})}
            for n, written, metrics in progress.found(self.task_home, self.since, dpo):
                self.store.add_checkpoint(self.job_id, offset + n, written,
                                          {**metrics, "step": float(offset + n)})
        elif msg.startswith(("evaluated ", "warm start: ", "no warm start: ")):
            self._print(msg)


def _number(msg: str, key: str) -> float | None:
    try:
        return float(msg.split(key, 1)[1].split()[0])
    except (IndexError, ValueError):  # absent, or None
        return None


def _preset(job: dict, examples: int) -> tuple[dict, dict]:
    """The job's preset (the CPU preset of its base model and method, overlaid with $FT_PIPELINE_FINETUNING_PRESET's
    ops) and its resolved hyperparameters: a supervised job's for lora_adapter, a DPO job's for preference_adapter
    (its SFT stage trains as the preset says). The validation file's drop is the holdout of the split (and of the
    pairs), and a DPO job registers its DPO model."""
    dpo = job["method"]["type"] == "dpo"
    base = ("cpu_tiny.yaml" if job["model"].startswith("builtin:") else
            "cpu_smollm2_dpo.yaml" if dpo else "cpu_smollm2.yaml")
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
    config("lora_adapter")["seed"] = config("preference_adapter")["seed"] = job["seed"]
    config("evaluation_report_beats_base_and_champion").update(_GATE)
    config("preference_adapter")["enabled"] = dpo
    holdout = job_files.holdout_drops(job["validation_file"])
    config("train_holdout_split")["holdout_drops"] = holdout
    if dpo:
        config("preference_pairs")["holdout_drops"] = holdout
        config("evaluation_report_beats_base_and_champion")["candidate"] = "dpo"
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
    files = {f: Path(store.file(f)["path"]) for f in (job["training_file"], job["validation_file"]) if f}
    laid = job_files.lay_out(raw, files, job["method"]["type"], job["validation_file"])

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
    keys, drops = [drop_key(name) for name in laid.sft], drops_for(task.name)
    if new := [k for k in keys if k not in instance.get_dynamic_partitions(drops.name)]:
        instance.add_dynamic_partitions(drops.name, new)
    # train_and_register reads the preference drops itself (preference_pairs is one of its assets)
    for name, graph, kw in [*((ingest.name, ingest, {"partition_key": k}) for k in keys), (train.name, train, {})]:
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
    steps, tokens = int(lora["global_step"]), int(lora["train_tokens"])
    if laid.preference:  # a DPO job's model is the DPO adapter, trained after SFT
        dpo = metadata("preference_adapter")
        if not dpo.get("trained") or reg.get("training_stage") != "dpo":
            why = dpo.get("skipped_because") or f"the registered version is {reg.get('training_stage')}'s"
            return _fail(store, job_id, "run_failed", f"DPO did not train the job's model: {why}")
        steps, tokens = steps + int(dpo["global_step"]), tokens + int(dpo["train_tokens"])
    ft_model = ft_jobs.fine_tuned_model(job["model"], job["suffix"], job_id)
    # the last checkpoint is the trained model itself, the registered version
    store.add_checkpoint(job_id, steps, int(time.time()), {**events.last, "step": float(steps)})
    store.finish(job_id, "succeeded", fine_tuned_model=ft_model, registered_model=reg["registered_model"],
                 version=str(reg["version"]), trained_tokens=tokens)
    store.add_event(job_id, f"New fine-tuned model created: {ft_model} ({reg['registered_model']} version "
                            f"{reg['version']})")
    store.add_event(job_id, "The job has successfully completed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
