"""Resources: where files live (PipelineHome) and where runs are tracked (MlflowTracking); what a step sees of
them, and of its config, as its task (for_step, task_config)."""


import contextlib
import os
from pathlib import Path
from typing import TypeVar

import dagster as dg
import pydantic

from ft_pipeline import settings, tasks

C = TypeVar("C", bound=dg.Config)


@contextlib.contextmanager
def _sqlite_store_lock(tracking_uri: str):
    """An exclusive lock across processes for a sqlite:/// tracking store (a file beside the database); a no-op
    for other stores, which handle their own concurrency."""
    import fcntl

    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class PipelineHome(dg.ConfigurableResource):
    """Every file the pipeline reads or writes, as an absolute path under `home` (and `raw_dir` for drops).

    One resource for every task: `for_task` gives a task's view of it, whose drops are the task's raw folder and
    whose data, models, checkpoints and reports are under the task's home (the default task's: `home` itself).
    What tasks share stays at `root`: the gpu pool's lock, erasure requests, stored traffic, the answer cache."""

    home: str
    raw_dir: str
    task: str = tasks.DEFAULT

    @property
    def root(self) -> Path:
        return Path(self.home)

    @property
    def task_root(self) -> Path:
        return tasks.get(self.task).home(self.root)

    def for_task(self, task: str) -> "PipelineHome":
        """This home as `task` sees it (raw_dir: the task's drops)."""
        if task == self.task:
            return self
        # the raw root: the default task's raw folder, the parent of every other task's
        raw_root = Path(self.raw_dir) if tasks.get(self.task).is_default else Path(self.raw_dir).parent
        t = tasks.get(task)
        return PipelineHome(home=self.home, raw_dir=str(t.raw_dir(raw_root)), task=t.name)

    def pool_lock(self, context: dg.AssetExecutionContext):
        """Held by a step in a pool for its whole body: one step of that pool at a time on this home, even where
        Dagster's pool lets two through (see runs.pool_lock)."""
        from ft_pipeline.runs import control as runs

        return runs.pool_lock(self.root, context.op_def.pool, context.asset_key.to_user_string(), context.run_id,
                              context.log.info)

    def raw_file(self, drop: str) -> Path:
        """The raw file of a partition key (the file's own name, or a name whose key it is)."""
        from ft_pipeline.data.drop_files import raw_path

        # Partition keys can be added by hand in the UI: raw_path never lets one point outside the raw folder.
        return raw_path(Path(self.raw_dir), drop)

    def data(self, stage: str, drop: str | None = None, suffix: str = ".jsonl") -> Path:
        """home/data/<stage>/<drop>.jsonl, e.g. data('cleaned', drop) or data('quarantine', drop)."""
        d = self.task_root / "data" / stage
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{drop}{suffix}" if drop else d

    @property
    def split_dir(self) -> Path:
        return self.data("split")

    @property
    def models_dir(self) -> Path:
        d = self.task_root / "models"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def base_models_dir(self) -> Path:
        """Where base models are resolved, shared by every task (one copy of a base however many tasks use it)."""
        return self.root / "models" / "base"

    @property
    def base_info(self) -> Path:
        return self.models_dir / "base_model.json"

    @property
    def gguf_dir(self) -> Path:
        """The champion as GGUF (`gguf_model`): model.gguf, Modelfile, export.json."""
        return self.models_dir / "gguf"

    @property
    def adapter_dir(self) -> Path:
        return self.models_dir / "adapter"

    @property
    def adapter_info(self) -> Path:
        return self.models_dir / "adapter.json"

    @property
    def warm_start_dir(self) -> Path:
        """A warm start's copy of the champion's adapter, while it trains (removed after training)."""
        return self.models_dir / "warm_start"

    def checkpoints(self, key: str) -> Path:
        return self.task_root / "checkpoints" / key

    @property
    def reports_dir(self) -> Path:
        d = self.task_root / "reports"
        d.mkdir(parents=True, exist_ok=True)
        return d


class MlflowTracking(dg.ConfigurableResource):
    """The MLflow tracking store and registry: SQLite and a local artifact folder by default, or a server."""

    tracking_uri: str
    artifact_root: str
    experiment: str = "ft_pipeline"
    registered_model_name: str = tasks.DEFAULT_MODEL_NAME
    ui_url: str = "http://127.0.0.1:5000"

    def for_task(self, task: str) -> "MlflowTracking":
        """The same store, registering under `task`'s model name (the default task: registered_model_name)."""
        t = tasks.get(task)
        if t.is_default:
            return self
        return MlflowTracking(tracking_uri=self.tracking_uri, artifact_root=self.artifact_root,
                              experiment=self.experiment, registered_model_name=t.model_name, ui_url=self.ui_url)

    def setup(self) -> str:
        """Point mlflow at the store and return the experiment id (creating it with our artifact root)."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        # The first client of a fresh SQLite store creates its tables and the experiment. Runs started together
        # (a backfill over every drop) would race there: "table ... already exists". One at a time, then.
        with _sqlite_store_lock(self.tracking_uri):
            exp = mlflow.get_experiment_by_name(self.experiment)
            if exp is None and self.tracking_uri.startswith(("http://", "https://")):
                # A tracking server decides where artifacts go (its --artifacts-destination), for every client.
                exp_id = mlflow.create_experiment(self.experiment)
            elif exp is None:
                Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
                exp_id = mlflow.create_experiment(self.experiment, artifact_location=Path(self.artifact_root).as_uri())
            else:
                exp_id = exp.experiment_id
        mlflow.set_experiment(experiment_id=exp_id)
        return exp_id

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext | dg.OpExecutionContext, run_name: str,
                  asset_key: str, parent_run_id: str | None = None, tags: dict | None = None):
        """An MLflow run tagged with the Dagster run, asset, partition and code version of this step."""
        import mlflow

        exp_id = self.setup()
        code_version = None
        if isinstance(context, dg.AssetExecutionContext):
            asset_key = task_key(context, asset_key).to_user_string()  # the key of this task's asset
            code_version = context.assets_def.code_versions_by_key.get(dg.AssetKey.from_user_string(asset_key))
        all_tags = {"dagster.run_id": context.run_id, "dagster.asset_key": asset_key,
                    "dagster.job": context.job_name, "dagster.code_version": code_version or "",
                    "dagster.partition": context.partition_key if context.has_partition_key else "",
                    "ft_pipeline.task": task_of(context) if isinstance(context, dg.AssetExecutionContext) else "",
                    **(tags or {})}
        with mlflow.start_run(run_name=run_name, tags=all_tags, parent_run_id=parent_run_id,
                              nested=parent_run_id is not None) as run:
            yield run, exp_id


def task_of(context) -> str:
    """The task of the step running in `context` (an asset's or an asset check's): the prefix of its asset keys,
    none for the default task (ft_pipeline/defs/tasks.py)."""
    op_context = getattr(context, "op_execution_context", context)
    assets_def = op_context.assets_def
    keys = [*assets_def.keys, *(c.asset_key for c in assets_def.check_keys)]
    path = keys[0].path
    return path[0] if len(path) > 1 else tasks.DEFAULT


def task_key(context, name: str) -> dg.AssetKey:
    """The key of the asset `name` of this step's task (`train_set`, `routing/train_set`)."""
    return dg.AssetKey([*tasks.get(task_of(context)).key_prefix, name])


def for_step(context, home: PipelineHome, mlflow_tracking: "MlflowTracking | None" = None):
    """The resources as the task of this step sees them: (home, mlflow_tracking), or home alone."""
    task = task_of(context)
    return home.for_task(task) if mlflow_tracking is None else (home.for_task(task), mlflow_tracking.for_task(task))


def task_preset(context, op: str) -> dict:
    """`ops.<op>.config` of the preset of this step's task (tasks.yaml): what the step uses for each field its
    run's config does not set. Empty for the default task: its preset for such runs is the config classes'
    defaults, $FT_PIPELINE_DEFAULTS (config.py)."""
    task = tasks.get(task_of(context))
    if task.is_default:
        return {}
    try:
        entry = task.preset_ops().get(op) or {}
    except tasks.TaskError as e:
        raise dg.Failure(description=str(e)) from None
    config = entry.get("config") if isinstance(entry, dict) else None
    if not isinstance(config or {}, dict):
        raise dg.Failure(description=f"{task.preset_path()}: ops.{op}: expected a mapping with a `config:` mapping")
    return dict(config or {})


def run_config_of(context) -> dict:
    """What this step's run config sets for its op, `ops.<node>.config`: explicit values only, no defaults. The
    node is the step's in the run's job, as Dagster reads its config: named after the op, suffixed `_2` where the
    run holds two tasks' copies of it."""
    op_context = getattr(context, "op_execution_context", context)
    entry = {"ops": (op_context.run.run_config or {}).get("ops") or {}}
    for name in op_context.op_handle.path:
        entry = (entry.get("ops") or {}).get(name) or {}
    return dict(entry.get("config") or {})


def task_config(context, config: C) -> C:
    """`config` as this step's task configures it: each field the run's config sets (the Launchpad, a job's
    config, `ft-pipeline run`), else the task's preset's (task_preset), else the config class's default. So a run
    with no config (the automation's retrain, a materialization from the asset graph) trains a task as its
    preset says. Built through the config class: the knob checks run, and a bad preset fails the step in one
    line naming the file and the key. The default task's `config` is returned as it is."""
    task = tasks.get(task_of(context))
    if task.is_default:
        return config
    op = getattr(context, "op_execution_context", context).op_def.name
    if not (preset := task_preset(context, op)):
        return config
    cls, where = type(config), f"{task.preset_path()}: ops.{op}.config"
    if unknown := sorted(set(preset) - set(cls.model_fields)):
        raise dg.Failure(description=f"{where}: unknown key(s) {', '.join(unknown)} (not fields of {cls.__name__})")
    explicit = {k: getattr(config, k) for k in run_config_of(context) if k in cls.model_fields}
    try:
        return cls(**{k: _env_value(where, k, v) for k, v in preset.items() if k not in explicit}, **explicit)
    except pydantic.ValidationError as e:
        problems = (f"{where}{''.join(f'.{x}' for x in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
                    for err in e.errors())
        raise dg.Failure(description="; ".join(problems)) from None


def _env_value(where: str, key: str, value):
    """A preset's value, Dagster's `{env: NAME}` read from the environment as run config reads it."""
    if not (isinstance(value, dict) and list(value) == ["env"]):
        return value
    if (found := os.environ.get(str(value["env"]))) is None:
        raise dg.Failure(description=f"{where}.{key}: environment variable {value['env']} is not set")
    return found


def default_resources() -> dict:
    h = settings.home()
    return {
        "home": PipelineHome(home=str(h), raw_dir=str(settings.raw_dir())),
        "mlflow_tracking": MlflowTracking(tracking_uri=settings.mlflow_tracking_uri(h),
                                          artifact_root=str(settings.mlflow_artifact_root(h))),
    }
