"""`ft-pipeline`: the main job (ingest every drop, train, evaluate, register) through Dagster on the persistent
instance, and small helpers for the Makefile."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ft_pipeline import settings
from ft_pipeline.cli import forget as forget_cli
from ft_pipeline.cli import review as review_cli


def prepare_instance_home() -> Path:
    """The Dagster instance home: $DAGSTER_HOME when it is set (your own dagster.yaml, e.g. on Postgres: see
    deploy/), else $FT_PIPELINE_HOME/dagster holding a copy of the repo's dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    dagster_home = settings.home() / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    src = settings.REPO_ROOT / "dagster.yaml"
    dst = dagster_home / "dagster.yaml"
    if not dst.exists() or dst.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dst)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def _failure_message(result) -> str:
    import dagster as dg

    msgs = []
    for ev in result.all_events:
        if ev.is_step_failure:
            err = ev.step_failure_data.error
            user = ev.step_failure_data.user_failure_data
            msgs.append(f"{ev.step_key}: {user.description if user and user.description else err.message.strip()}")
        elif ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if not data.passed and data.severity != dg.AssetCheckSeverity.WARN:
                msgs.append(f"check {data.check_name} failed: {data.description or ''}".strip())
    return "; ".join(msgs) or "run failed (see the Dagster UI)"


def run_main(preset_path: str | None, force: bool = False, task: str | None = None) -> int:
    """One task's whole graph (the default task's without `task`), with `preset_path` or else the task's preset."""
    from ft_pipeline import tasks

    t = tasks.get(task)  # a bad or unknown name: TaskError, one line
    preset_path = preset_path or t.preset_path() or settings.REPO_ROOT / "configs" / "cpu_smollm2.yaml"
    prepare_instance_home()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import warnings

    import dagster as dg

    # transformers 5.23 calls its own deprecated property inside Trainer and PEFT: noise on every run
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated")  # read by TRL's DPOTrainer

    from ft_pipeline.cli import presets
    from ft_pipeline.definitions import defs
    from ft_pipeline.defs.jobs import job_name
    from ft_pipeline.runs import console
    from ft_pipeline.runs import control as runs

    jobs = [defs.resolve_job_def(job_name(t.name, j)) for j in ("ingest_drop", "train_and_register")]
    jobs += [defs.resolve_job_def("traffic_daily")] if t.is_default else []
    preset = presets.load(preset_path, jobs) if preset_path else {}
    runs.sigterm_as_interrupt()
    console.stage_lines_only()
    with runs.home_lock(settings.home()):
        # inside the lock: Dagster's SQLite run and schedule storages create their tables without guarding
        # against a second process doing the same ("table secondary_indexes already exists")
        instance = dg.DagsterInstance.get()
        for line in runs.reap(instance, settings.home()):
            print(f"stale run: {line}")
        return _run_all(instance, preset, force, t)


def _run_all(instance, preset: dict, force: bool, task) -> int:
    import dagster as dg

    from ft_pipeline.cli import presets, staleness
    from ft_pipeline.data import formats
    from ft_pipeline.definitions import defs
    from ft_pipeline.defs.jobs import job_name
    from ft_pipeline.defs.partitions import drops_for
    from ft_pipeline.runs import control as runs

    ingest, job = (defs.resolve_job_def(job_name(task.name, j)) for j in ("ingest_drop", "train_and_register"))
    # the home the runs share (locks, the gpu pool's claims); the task's files are under task_home
    home, task_home, raw_dir = settings.home(), task.home(settings.home()), task.raw_dir(settings.raw_dir())
    drops = drops_for(task.name)
    t0 = time.monotonic()
    found, bad_names = formats.find_drops(raw_dir)
    known = set(instance.get_dynamic_partitions(drops.name))
    if new := sorted(set(found) - known):
        instance.add_dynamic_partitions(drops.name, new)
    print(f"ft_pipeline home: {home}" + ("" if task.is_default else f"\ntask {task.name}: {task_home}, registered "
                                                                     f"as {task.model_name}")
          + f"\nraw drops in {raw_dir}: {len(found)}")
    for msg in bad_names:
        print(f"  skipped: {msg}")

    preset_ops = preset.get("ops", {}) or {}
    to_ingest = found if force else staleness.drops_to_ingest(instance, defs, found, preset_ops, task.name)
    if to_ingest and not force:
        print("to ingest: " + ", ".join(f"{d} ({why})" for d, why in to_ingest.items()))
    failed = {}
    for drop in sorted(to_ingest):
        res = runs.execute(ingest, instance, home, partition_key=drop, run_config=presets.run_config(preset, ingest))
        if not res.success:
            failed[drop] = _failure_message(res)
    print("\nper drop:                               rows in   kept  quarantined  duplicates  erased  conflicts")
    for drop in sorted(found):
        stats_path = task_home / "data" / "cleaned" / f"{drop}.stats.json"
        # The file's own name; the partition key too where it differs (that is what the UI and the data files use).
        label = found[drop].name if found[drop].name == drop else f"{found[drop].name} [{drop}]"
        if drop in failed:
            print(f"  {label:36s} FAILED: {failed[drop]}")
        else:
            s = json.loads(stats_path.read_text())
            print(f"  {label:36s} {s['rows_in']:7d} {s['kept']:6d} {s['quarantined']:12d} {s['duplicates']:11d}"
                  f" {s.get('erased', 0):7d} {s.get('conflicts', 0):10d}")
            _print_conflicts(task_home / "data" / "conflicts" / f"{drop}.jsonl", s.get("conflict_policy", "keep"))

    # The split (and base model) first: if they come out byte-identical, training is not stale afterwards.
    if not force and (first := staleness.train_selection(instance, defs, job.name, preset_ops,
                                                         only=staleness.FIRST_STAGE, task=task.name)):
        print("\nto materialize first:\n" + "\n".join(f"  {k}: {why}" for k, why in first.items()))
        sub = job.get_subset(asset_selection={dg.AssetKey.from_user_string(k) for k in first})
        res = runs.execute(sub, instance, home, run_config=presets.run_config(preset, sub))
        if not res.success:
            print(f"not registered: {_failure_message(res)}")
            return 1
    todo = staleness.train_selection(instance, defs, job.name, preset_ops, force, task=task.name)
    if not todo:
        print(f"\nnothing to do: every asset of {job.name} is up to date with its inputs, code and config "
              f"(--force retrains anyway; wall time {time.monotonic() - t0:.1f}s)")
        _print_split_conflicts(task_home)
        if failed:
            print(f"{len(failed)} drop(s) failed and were left out: {', '.join(sorted(failed))}")
        return 0
    print("\nto materialize:\n" + "\n".join(f"  {k}: {why}" for k, why in todo.items()))
    train = job.get_subset(asset_selection={dg.AssetKey.from_user_string(k) for k in todo})
    res = runs.execute(train, instance, home, run_config=presets.run_config(preset, train))
    print(f"\n{job.name} run {res.run_id}: {'SUCCESS' if res.success else 'FAILURE'}")
    _print_split_conflicts(task_home)
    report_path = task_home / "reports" / "evaluation.json"
    if report_path.exists():
        report = json.loads(report_path.read_text())
        metrics = report["metrics"]
        print(f"holdout ({report['holdout_examples']} examples)   " + "  ".join(f"{n:>9s}" for n in metrics))
        for k in ("json_valid", "field_accuracy", "exact_match", "holdout_loss"):
            print(f"  {k:28s}" + "  ".join(f"{metrics[n][k]:9.3f}" for n in metrics))
        if pairs := report.get("pair_accuracy"):
            print(f"  {'pair_accuracy':28s}" + "  ".join(f"{pairs[n]:9.3f}" if n in pairs else " " * 9
                                                         for n in metrics))
        if cand := report.get("candidate"):
            print(f"to the gate: {cand['stage'].upper()} ({cand['why']})")
        from ft_pipeline.evaluation.cost import console_lines

        print("\n".join(console_lines(report.get("baselines"))))
        print(f"report: {task_home / 'reports' / 'evaluation.md'}")
    if res.success:
        mat = instance.get_latest_materialization_event(
            dg.AssetKey([*task.key_prefix, "registered_model"])).asset_materialization
        md = {k: v.value for k, v in mat.metadata.items()}
        print(f"registered: {md['registered_model']} version {md['version']} "
              f"({md.get('training_stage', 'sft').upper()}; alias champion; "
              f"previous champion: {md['previous_champion']})\nload it: mlflow.pyfunc.load_model('{md['model_uri']}')")
    else:
        print(f"not registered: {_failure_message(res)}")
    if failed:
        print(f"\n{len(failed)} drop(s) failed and were left out: {', '.join(sorted(failed))}")
    print(f"\nDagster UI and MLflow UI: make ui   (wall time {time.monotonic() - t0:.0f}s)")
    return 0 if res.success else 1


def _print_conflicts(path: Path, policy: str, indent: str = "    ", limit: int = 5) -> None:
    """The label conflicts of a report file (cleaning's per drop, the split's): the input, then each row with
    its answer."""
    from ft_pipeline.data.conflicts import shorten
    from ft_pipeline.jsonl import read_jsonl

    found = read_jsonl(path) if path.exists() else []
    for c in found[:limit]:
        print(f"{indent}conflict ({policy}): {shorten(c['input'], 90)}")
        for r in c["rows"]:
            print(f"{indent}  {r['drop']} line {r['line']} ({r['outcome']}): {shorten(r['answer'], 110)}")
    if len(found) > limit:
        print(f"{indent}... and {len(found) - limit} more in {path}")


def _print_split_conflicts(home: Path) -> None:
    manifest = home / "data" / "split" / "manifest.json"
    if manifest.exists() and (m := json.loads(manifest.read_text())).get("conflicts"):
        print(f"label conflicts across the drops (train_set, conflicts={m['conflict_policy']}): {m['conflicts']}")
        _print_conflicts(home / "data" / "split" / "conflicts.jsonl", m["conflict_policy"], "  ")


def prepare_ui() -> int:
    """Print the env lines the Makefile's `ui` target needs, after preparing DAGSTER_HOME."""
    h = prepare_instance_home()
    print(f"DAGSTER_HOME={h}")
    print(f"MLFLOW_BACKEND={settings.mlflow_tracking_uri()}")
    print(f"MLFLOW_ARTIFACTS={settings.mlflow_artifact_root().as_uri()}")
    settings.mlflow_artifact_root().mkdir(parents=True, exist_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ft-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="ingest every drop, train, evaluate and register (the main job)")
    run.add_argument("--preset", help="a YAML preset from configs/ (Dagster run config under `ops:`); default: the "
                                      "task's preset in tasks.yaml (the default task's: configs/cpu_smollm2.yaml, "
                                      "LoRA on the packaged SmolLM2-135M-Instruct)")
    run.add_argument("--task", help="the task to run (tasks.yaml; docs/tasks.md); default: the default task, the "
                                    "drops directly in data/raw")
    run.add_argument("--force", action="store_true",
                     help="re-ingest every drop and retrain even when nothing changed")
    run.add_argument("--debug", action="store_true", help="show the traceback of a preset error")
    sub.add_parser("env", help="prepare DAGSTER_HOME and print the store locations (used by `make ui`)")
    lin = sub.add_parser("lineage", help="which raw rows (drop, line) trained a registered model version")
    lin.add_argument("--version", default="champion", help="a version number or an alias (default: champion)")
    who = sub.add_parser("trained-on", help="which registered model versions were trained on a raw row")
    who.add_argument("--drop", required=True, help="the drop: its file name or its partition key")
    who.add_argument("--line", type=int, help="the line (or row) in that file")
    who.add_argument("--raw-sha256", help="or a prefix of the row's hash, as in the quarantine and cleaned files")
    exp = sub.add_parser("export", help="merge a registered version's adapter into its base: one safetensors model "
                                        "dir, or GGUF files for llama.cpp, Ollama and LM Studio (--format gguf)")
    exp.add_argument("--version", default="champion", help="a version number or an alias (default: champion)")
    exp.add_argument("--out", required=True, help="the directory to write (merged: replaced if it exists)")
    exp.add_argument("--format", default="merged", choices=("merged", "gguf", "gguf-adapter"),
                     help="merged (safetensors, default), gguf (the merged model as model.gguf + Modelfile) or "
                          "gguf-adapter (the LoRA as adapter.gguf for the base's GGUF + Modelfile)")
    exp.add_argument("--type", default="q8_0", choices=("f32", "f16", "q8_0"), help="GGUF tensor type (default q8_0)")
    exp.add_argument("--force", action="store_true", help="GGUF: replace what --out already holds")
    pro = sub.add_parser("promote", help="point the champion alias at a registered version (this is how to roll back)")
    pro.add_argument("--version", required=True, help="the version number to make champion")
    forget_cli.add_parser(sub)
    review_cli.add_parser(sub)
    srv = sub.add_parser("serve", help="serve every registered model (task) at its champion alias behind the OpenAI "
                                       "Chat Completions API, following each alias as it moves, tasks on one base "
                                       "model sharing it (HOST, PORT; see docs/serving.md)")
    srv.add_argument("--model", action="append", dest="models", metavar="NAME",
                     help="serve this registered model (repeatable; default: every registered model that has the "
                          "alias, $FT_PIPELINE_SERVE_MODELS)")
    srv.add_argument("--alias", help="the alias a bare model id answers with and that is followed (default: champion)")
    srv.add_argument("--host", help="interface to listen on (default: $HOST or 127.0.0.1)")
    srv.add_argument("--port", type=int, help="port (default: $PORT or 8000)")
    srv.add_argument("--poll-seconds", type=float, help="how often the aliases are read from the registry (default 5)")
    srv.add_argument("--batch-window-ms", type=float, help="how long a batch waits for requests to join (default 50)")
    srv.add_argument("--max-batch", type=int, help="the most requests generated together (default 16)")
    srv.add_argument("--store", choices=("requested", "all", "none"),
                     help="which completions are stored for review: those sent with store=true (requested, the "
                          "default), every one (all) or none ($FT_PIPELINE_STORE)")
    srv.add_argument("--store-retention-days", type=float,
                     help="stored completions older than this are deleted (default 30; 0 keeps them)")
    srv.add_argument("--default-response-format", choices=("off", "registered"),
                     help="what a request without response_format gets: free text (off, the default, as OpenAI) "
                          "or the served version's registered output schema as a strict json_schema (registered)")
    for p in (lin, who, exp, pro):
        p.add_argument("--model", help="registered model name (default: the task's, ft-pipeline-adapter for the "
                                       "default task)")
        p.add_argument("--task", help="the task whose registered model this is (tasks.yaml, or a fine-tuning "
                                      "job's; docs/tasks.md); with --model, the two must agree")
    args = parser.parse_args(argv)
    # MLflow draws a bar for every artifact it reads or writes (forget, lineage and export read several)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.cmd == "run":
        from ft_pipeline.cli.presets import PresetError
        from ft_pipeline.tasks import TaskError

        try:
            return run_main(args.preset, args.force, args.task)
        except TaskError as e:
            print(f"ft-pipeline run: {e}", file=sys.stderr)
            return 2
        except PresetError as e:
            if args.debug:
                raise
            print("\n".join(e.lines), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("\ninterrupted: the run is marked failed and its slots are free; training checkpoints are kept, "
                  "and the next `ft-pipeline run` resumes from the last one", file=sys.stderr)
            return 130
    if args.cmd == "forget":
        return forget_cli.main(args)
    if args.cmd == "review":
        return review_cli.main(args)
    if args.cmd in ("lineage", "trained-on", "export", "promote"):
        from ft_pipeline.tasks import TaskError

        try:
            args.model = registered_model(args.task, args.model)
        except TaskError as e:
            print(f"ft-pipeline {args.cmd}: {e}", file=sys.stderr)
            return 2
        return lineage_main(args) if args.cmd in ("lineage", "trained-on") else registry_main(args)
    if args.cmd == "serve":
        from ft_pipeline.serving import ServeConfig, serve

        return serve(ServeConfig.from_env(models=args.models, alias=args.alias, host=args.host, port=args.port,
                                          poll_s=args.poll_seconds, batch_window_ms=args.batch_window_ms,
                                          max_batch=args.max_batch, store=args.store,
                                          store_retention_days=args.store_retention_days,
                                          default_response_format=args.default_response_format))
    return prepare_ui()


def registered_model(task: str | None, model: str | None) -> str:
    """The registered model a registry command works on: `model`, else the task's (`task` None: the default
    task's, ft-pipeline-adapter). TaskError (one line) for a bad or unknown task, or a `model` that is not the
    task's."""
    from ft_pipeline import tasks

    if task is None:
        return model or tasks.DEFAULT_MODEL_NAME
    t = tasks.get(task)
    if model is not None and model != t.model_name:
        raise tasks.TaskError(f"--model {model} is not task {t.name}'s registered model ({t.model_name}): "
                              "pass one of --task and --model, or both naming the same model")
    return t.model_name


def registry_main(args) -> int:
    import mlflow

    from ft_pipeline.export import merged as export
    from ft_pipeline.registry import versions as registry

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    if args.cmd == "promote":
        previous = registry.promote(args.model, args.version)
        print(f"{args.model}: champion {previous or 'none'} -> {args.version}")
        return 0
    if args.format != "merged":
        from ft_pipeline.export.gguf import GgufExportError
        from ft_pipeline.export.gguf_bundle import export_gguf

        out = Path(args.out).resolve()
        try:
            meta = export_gguf(args.model, args.version, out, args.type, args.format, args.force)
        except GgufExportError as e:
            print(f"export: {e}", file=sys.stderr)
            return 2
        print(f"{args.model} version {meta['version']} as GGUF ({args.type}) in {out}:")
        for file, f in meta["files"].items():
            print(f"  {file}  {f['size']:,} bytes  sha256 {f['sha256'][:16]}")
        if "modelfile" in meta:
            print(f"  no Modelfile: {meta['modelfile']}")
        print(f"ollama create {args.model} -f {out / 'Modelfile'} && ollama run {args.model}")
        return 0
    out, prov = export.export_registered(args.model, args.version, Path(args.out).resolve())
    print(f"{args.model} version {prov['version']} merged into {out}")
    return 0


def lineage_main(args) -> int:
    import mlflow

    from ft_pipeline.registry import versions as registry

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    if args.cmd == "lineage":
        version = args.version
        if not version.isdigit():
            version = mlflow.MlflowClient().get_model_version_by_alias(args.model, version).version
        rows = registry.training_rows(args.model, str(version))
        for r in rows:
            print(json.dumps(r))
        print(f"{len(rows)} rows trained {args.model} version {version}", file=sys.stderr)
        return 0
    hits = registry.versions_trained_on(args.model, args.drop, args.line, args.raw_sha256)
    for h in hits:
        print(json.dumps(h))
    print(f"{len(hits)} version(s) of {args.model} were trained on that row", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
