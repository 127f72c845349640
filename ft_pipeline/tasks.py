"""Tasks: one pipeline, several fine-tuning tasks. A task is a name, its drops (`<raw_dir>/<task>/`), its files
(`<home>/tasks/<task>/`), its preset and its registered model. The default task keeps the flat layout (the drops
directly in `<raw_dir>`, the files directly in `<home>`) and the registered model `ft-pipeline-adapter`; the
others are listed in tasks.yaml at the root of the checkout ($FT_PIPELINE_TASKS moves it), and the tasks of
fine-tuning jobs in the home's finetuning/tasks.yaml (written by the job runner, cli/finetuning_job.py). Plain
Python: the Dagster edge builds each task's assets from these (ft_pipeline/defs/tasks.py)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
from pathlib import Path

from ft_pipeline import settings

DEFAULT = "default"
DEFAULT_MODEL_NAME = "ft-pipeline-adapter"
TASKS_ENV = "FT_PIPELINE_TASKS"
SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
RESERVED = {"preferences": "the raw folder's preferences/ holds the default task's preference drops",
            "tasks": "the home's tasks/ holds every task's files"}


class TaskError(ValueError):
    """A bad task name or tasks file: its message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    preset: str = ""
    """The task's preset (relative to the checkout, or absolute): what `ft-pipeline run --task` runs, and what
    every run of the task's assets uses for a config field its run config does not set (the automation's, the
    Launchpad's: resources.task_config). Empty: the Dagster config classes' defaults. The default task's runs
    take the config classes' defaults, $FT_PIPELINE_DEFAULTS (config.py), for what their config does not set."""
    registered_model_name: str = ""
    description: str = ""

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    @property
    def model_name(self) -> str:
        """The registered model: configured, else ft-pipeline-adapter for the default task and the task's name."""
        return self.registered_model_name or (DEFAULT_MODEL_NAME if self.is_default else self.name)

    @property
    def key_prefix(self) -> list[str]:
        """The prefix of its asset keys: none for the default task (its keys stay as they were)."""
        return [] if self.is_default else [self.name]

    @property
    def ident(self) -> str:
        """The name as a Dagster name (job, group, partitions, sensor): '-' becomes '_'."""
        return self.name.replace("-", "_")

    def raw_dir(self, raw_root: Path) -> Path:
        return Path(raw_root) if self.is_default else Path(raw_root) / self.name

    def home(self, home_root: Path) -> Path:
        return Path(home_root) if self.is_default else Path(home_root) / "tasks" / self.name

    def preset_path(self) -> Path | None:
        if not self.preset:
            return None
        p = Path(self.preset)
        return p if p.is_absolute() else settings.REPO_ROOT / p

    def preset_ops(self) -> dict:
        """The `ops:` of its preset ({} without one), read again when the file changes; TaskError if it is not a
        readable preset."""
        path = self.preset_path()
        if path is None:
            return {}
        try:
            mtime_ns = path.stat().st_mtime_ns
        except OSError as e:
            raise TaskError(f"task {self.name!r}: cannot read its preset {path}: {e.strerror}") from None
        return copy.deepcopy(_preset_ops(self.name, path, mtime_ns))


def check_name(name: str) -> str:
    """The name if it can name a task, else TaskError saying why."""
    if not isinstance(name, str) or not SLUG.fullmatch(name):
        raise TaskError(f"task name {name!r} is not a slug: lowercase letters, digits, '-' and '_', starting "
                        "with a letter or digit")
    if name in RESERVED:
        raise TaskError(f"task name {name!r} is reserved: {RESERVED[name]}")
    return name


def tasks_file() -> Path:
    return Path(os.environ.get(TASKS_ENV) or settings.REPO_ROOT / "tasks.yaml").expanduser().resolve()


def jobs_tasks_file() -> Path:
    """The tasks of the home's fine-tuning jobs (a job's `suffix`, or its id): the same format as tasks.yaml."""
    return settings.home() / "finetuning" / "tasks.yaml"


def repo_tasks() -> dict[str, Task]:
    """The tasks of the tasks file alone (the default task first), without the fine-tuning jobs' tasks."""
    path = tasks_file()
    if not path.exists():
        return {DEFAULT: Task(DEFAULT)}
    return dict(_load(path, path.stat().st_mtime_ns))


def add_job_task(task: Task) -> None:
    """Record (or update) a fine-tuning job's task in the home's jobs tasks file; TaskError if its name is a
    task of the tasks file's. The caller holds the home's run lock (one writer at a time)."""
    import yaml

    check_name(task.name)
    if task.name in repo_tasks():
        raise TaskError(f"task {task.name!r} is a task of {tasks_file()}, not a fine-tuning job's")
    path = jobs_tasks_file()
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    entries = doc.get("tasks") or {}
    entries[task.name] = {k: v for k, v in dataclasses.asdict(task).items() if k != "name" and v}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    tmp.replace(path)


@functools.cache
def _load(path: Path, mtime_ns: int) -> dict[str, Task]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise TaskError(f"{path}: not a readable tasks file ({e})") from None
    entries = doc.get("tasks") if isinstance(doc, dict) else None
    if not isinstance(entries, dict):
        raise TaskError(f"{path}: expected a mapping `tasks:` of task name to its settings")
    out = {DEFAULT: Task(DEFAULT)}
    idents = {DEFAULT: DEFAULT}
    fields = {f.name for f in dataclasses.fields(Task)} - {"name"}
    for name, spec in entries.items():
        spec = spec or {}
        if not isinstance(spec, dict) or (unknown := set(spec) - fields):
            raise TaskError(f"{path}: task {name!r}: expected a mapping of {sorted(fields)}"
                            + (f", not {sorted(unknown)}" if isinstance(spec, dict) else ""))
        if name != DEFAULT:
            try:
                check_name(name)
            except TaskError as e:
                raise TaskError(f"{path}: {e}") from None
        elif spec.get("registered_model_name", DEFAULT_MODEL_NAME) != DEFAULT_MODEL_NAME:
            raise TaskError(f"{path}: the default task registers {DEFAULT_MODEL_NAME} (the MlflowTracking resource's "
                            "registered_model_name), not a name from the tasks file")
        task = Task(name, **{k: str(v) for k, v in spec.items()})
        if (other := idents.setdefault(task.ident, name)) != name:
            raise TaskError(f"{path}: tasks {other!r} and {name!r} have the same Dagster name {task.ident!r}")
        out[name] = task
    names = [t.model_name for t in out.values()]
    if len(set(names)) != len(names):
        raise TaskError(f"{path}: two tasks register the same model name ({sorted(names)})")
    return out


@functools.cache
def _preset_ops(name: str, path: Path, mtime_ns: int) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise TaskError(f"task {name!r}: {path} is not a readable preset ({e})".replace("\n", " ")) from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict) or not isinstance(doc.get("ops") or {}, dict):
        raise TaskError(f"task {name!r}: {path}: expected a preset, a mapping with an `ops:` mapping")
    return doc.get("ops") or {}


def all_tasks() -> dict[str, Task]:
    """Every task, the default first: the tasks file's (its `default:` entry configures the default task), or
    the default task alone when there is no tasks file; then the home's fine-tuning jobs' tasks."""
    out = repo_tasks()
    path = jobs_tasks_file()
    if not path.exists():
        return out
    jobs = _load(path, path.stat().st_mtime_ns)
    for name, task in jobs.items():
        if name == DEFAULT:
            continue
        if name in out:
            raise TaskError(f"{path}: task {name!r} is also a task of {tasks_file()}: rename one of them")
        out[name] = task
    idents, names = [t.ident for t in out.values()], [t.model_name for t in out.values()]
    if len(set(idents)) != len(idents) or len(set(names)) != len(names):
        raise TaskError(f"{path}: a fine-tuning job's task has the Dagster name or registered model of a task of "
                        f"{tasks_file()}")
    return out


def get(name: str | None) -> Task:
    """The task of this name (None: the default task), or TaskError naming the known ones."""
    if name is None or name == DEFAULT:
        return all_tasks()[DEFAULT]
    check_name(name)
    known = all_tasks()
    if name not in known:
        raise TaskError(f"unknown task {name!r}: {tasks_file()} and {jobs_tasks_file()} have "
                        f"{', '.join(sorted(known))}")
    return known[name]
