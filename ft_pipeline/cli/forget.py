"""`ft-pipeline forget`: record an erasure request for raw rows and remove their text from what the pipeline
keeps; `--status` says which registered versions still contain erased rows (erasure/requests.py)."""

from __future__ import annotations

import json
import sys

from ft_pipeline import settings


def add_parser(sub) -> None:
    fg = sub.add_parser("forget", help="erase raw rows: record an erasure request and remove their text from the "
                                       "pipeline's files; the next run retrains without them (see docs/erasure.md)")
    fg.add_argument("--drop", help="the drop: its file name or its partition key (with --line)")
    fg.add_argument("--line", type=int, help="the line (or row) in that file")
    fg.add_argument("--all-lines", action="store_true", help="every row of --drop (what deleting a fine-tuning "
                                                             "file through the API does)")
    fg.add_argument("--raw-sha256", help="or the raw row's hash (a prefix will do), as in the cleaned files")
    fg.add_argument("--text", help="or every row whose user or assistant text contains this (listed first), and "
                                   "every stored completion whose conversation, answer or correction does")
    fg.add_argument("--completion-id", help="or a stored completion (chatcmpl-...): deleted from the store, with "
                                            "every row a reviewed_traffic drop made from it")
    fg.add_argument("--reason", help="why, recorded with the request (never the erased text)")
    fg.add_argument("--yes", action="store_true", help="do not ask before erasing the rows --text found")
    fg.add_argument("--redact-source", action="store_true",
                    help="also rewrite the row's line in the raw JSONL file with a note (the file is otherwise "
                         "left alone)")
    fg.add_argument("--status", action="store_true",
                    help="list each request, the versions still trained on its rows and their aliases")
    fg.add_argument("--task", help="the task whose drops and files hold the rows (tasks.yaml, or a fine-tuning "
                                   "job's; docs/tasks.md); default: the default task")
    fg.add_argument("--model", help="registered model name (default: the task's, ft-pipeline-adapter for the "
                                    "default task)")


def _experiment() -> str:
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri())
    exp = mlflow.get_experiment_by_name("ft_pipeline")
    if exp is not None:
        exp_id = exp.experiment_id
    elif settings.mlflow_tracking_uri().startswith(("http://", "https://")):
        exp_id = mlflow.create_experiment("ft_pipeline")
    else:
        settings.mlflow_artifact_root().mkdir(parents=True, exist_ok=True)
        exp_id = mlflow.create_experiment("ft_pipeline", artifact_location=settings.mlflow_artifact_root().as_uri())
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def main(args) -> int:
    from ft_pipeline import tasks
    from ft_pipeline.erasure import requests as erasure

    try:
        task = tasks.get(args.task)
        args.model = args.model or task.model_name
        args.raw_dir, args.task_home = task.raw_dir(settings.raw_dir()), task.home(settings.home())
        return _status(args) if args.status else _forget(args)
    except (erasure.ErasureError, tasks.TaskError) as e:
        print(f"forget: {e}", file=sys.stderr)
        return 2


def _status(args) -> int:
    from ft_pipeline.erasure import registry as erasure_registry
    from ft_pipeline.erasure import requests as erasure

    _experiment()
    requests = erasure.load_requests(settings.home())
    for s in erasure_registry.status(args.model, requests):
        print(json.dumps(s))
        for v in s["versions_containing"]:
            aliases = f" (aliases: {', '.join(v['aliases'])})" if v["aliases"] else ""
            print(f"  version {v['version']}{aliases} still contains rows of {s['id']}; to delete it: python -c "
                  f"\"import mlflow; mlflow.MlflowClient().delete_model_version('{args.model}', '{v['version']}')\"",
                  file=sys.stderr)
    print(f"{len(requests)} erasure request(s)", file=sys.stderr)
    return 0


def _find(args) -> tuple[list[dict], list[str]]:
    """The raw rows and the stored completions the request names (each completion a found row was made from
    included)."""
    from ft_pipeline.erasure import completions
    from ft_pipeline.erasure import requests as erasure

    home, unreadable = settings.home(), []
    stored = (completions.existing(home, {args.completion_id}) if args.completion_id
              else completions.matching(home, args.text) if args.text else [])
    try:
        rows = erasure.find_rows(args.raw_dir, args.drop, args.line, args.raw_sha256, args.text, unreadable,
                                 args.completion_id, whole_drop=args.all_lines and args.line is None)
    except erasure.ErasureError:
        if not stored or args.drop is not None or args.raw_sha256 is not None:
            raise
        rows = []  # only stored completions match
    for msg in unreadable:
        print(f"  not searched (the pipeline cannot read it either): {msg}", file=sys.stderr)
    if args.completion_id and not rows and not stored:
        raise erasure.ErasureError(f"no stored completion {args.completion_id} and no raw row made from it")
    # everything made from the same stored completions: the SFT row and the preference pair of a correction
    ids = set(stored) | {r["completion_id"] for r in rows if r.get("completion_id")}
    seen = {(r["drop"], r["line"]) for r in rows}
    for c in sorted(ids - {args.completion_id}):
        more = erasure.find_rows(args.raw_dir, completion_id=c)
        rows += [r for r in more if (r["drop"], r["line"]) not in seen]
        seen |= {(r["drop"], r["line"]) for r in rows}
    return rows, completions.existing(home, ids)


def _forget(args) -> int:
    from ft_pipeline.erasure import completions
    from ft_pipeline.erasure import registry as erasure_registry
    from ft_pipeline.erasure import requests as erasure

    rows, stored = _find(args)
    for r in rows:
        print(f"  {r['file']} line {r['line']}  {r['raw_sha256'][:16]}  {r['preview']}")
    for c in stored:
        print(f"  stored completion {c}")
    if args.text is not None and not args.yes:
        what = f"{len(rows)} row(s)" + (f" and {len(stored)} stored completion(s)" if stored else "")
        answer = input(f"erase these {what}? [y/N] ") if sys.stdin.isatty() else sys.stdin.readline()
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing erased", file=sys.stderr)
            return 1
    home = settings.home()
    request = erasure.new_request(rows, args.reason, args.redact_source, stored)
    # The reviewed_traffic drops are the pipeline's own files: their erased lines are always rewritten.
    redact = rows if args.redact_source else [r for r in rows if completions.is_reviewed_drop(r)]
    if redact:
        for path in erasure.redact_source(args.raw_dir, redact, request):
            print(f"rewrote the erased line(s) of {path}")
    deleted = completions.delete(home, set(stored))
    erasure.append_request(home, request)
    if not rows:  # stored completions only: nothing was trained on them, nothing else holds them
        print(f"erasure request {request['id']}: deleted {deleted} stored completion(s); no raw row was made "
              f"from them")
        return 0
    exp_id = _experiment()
    run_id = erasure_registry.record_request(request)
    erased = erasure.erased_hashes(home)
    # the task's files (the default task's: the home's); the requests are the home's, every task's
    found = erasure.needles(erasure.erased_records(args.task_home, erased))  # before scrub removes those records
    counts = erasure.scrub(args.task_home, erased)
    replaced = erasure_registry.scrub_artifacts(exp_id, found)
    tagged = erasure_registry.refresh_tags(args.model, erasure.load_requests(home)) if _has_model(args.model) else []
    pending = [s["version"] for s in tagged if request["id"] in s["contains"]]
    print(f"erasure request {request['id']}: {len(rows)} row(s), recorded in {erasure.requests_path(home)} and "
          f"MLflow run {run_id}\nremoved {counts['data_lines']} line(s) of derived data files, "
          f"{counts['cache_entries']} evaluation cache entries; scrubbed {counts['reports']} report(s) and "
          f"{len(replaced)} MLflow artifact(s); deleted {deleted} stored completion(s)\nversions trained on it: "
          f"{', '.join(pending) or 'none'} (tagged {erasure_registry.PENDING}); `ft-pipeline run` re-ingests and "
          "retrains without it")
    return 0


def _has_model(name: str) -> bool:
    import mlflow

    try:
        mlflow.MlflowClient().get_registered_model(name)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
