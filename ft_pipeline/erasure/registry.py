"""The MLflow side of erasure requests (erasure/requests.py): which registered versions were trained on an erased
row, their tags, the request as an MLflow run, and evaluation artifacts scrubbed of an erased row's text."""

from __future__ import annotations

import datetime

import mlflow

from ft_pipeline.registry import versions as registry

PENDING = "erasure.pending"  # trained on an erased row, and no version trained without it exists yet
SUPERSEDED = "erasure.superseded"  # trained on an erased row; a version trained without it exists
CLEAN_OF = "erasure.clean_of"  # registered after the request and trained without its rows
REPORT_ARTIFACTS = ("evaluation.md", "samples.json", "champion_diff.json")


def _created_ms(request: dict) -> int:
    return int(datetime.datetime.fromisoformat(request["created"]).timestamp() * 1000)


def version_states(name: str, requests: list[dict]) -> list[dict]:
    """Per registered version (oldest first): version, aliases, created (ms), the ids of the requests whose rows
    it was trained on (`contains`) and of those registered after it that it does not contain (`clean_of`)."""
    client = mlflow.MlflowClient()
    out = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda m: int(m.version)):
        trained = {r["raw_sha256"] for r in registry.training_rows(name, mv.version)}
        contains = [q["id"] for q in requests if any(r["raw_sha256"] in trained for r in q["rows"])]
        clean_of = [q["id"] for q in requests if q["id"] not in contains and mv.creation_timestamp >= _created_ms(q)]
        out.append({"version": str(mv.version), "aliases": registry.aliases(client, name, mv.version),
                    "created": mv.creation_timestamp, "contains": contains, "clean_of": clean_of})
    return out


def refresh_tags(name: str, requests: list[dict]) -> list[dict]:
    """Tag every version with its erasure state: `erasure.pending` (request ids) on a version trained on an
    erased row until a version trained without it is registered, then `erasure.superseded`; `erasure.clean_of`
    on the versions registered after a request without its rows. Returns `version_states`."""
    client = mlflow.MlflowClient()
    states = version_states(name, requests)
    cleaned = {i for s in states for i in s["clean_of"]}
    for s in states:
        tags = {PENDING: [i for i in s["contains"] if i not in cleaned],
                SUPERSEDED: [i for i in s["contains"] if i in cleaned], CLEAN_OF: s["clean_of"]}
        current = client.get_model_version(name, s["version"]).tags or {}
        for key, ids in tags.items():
            if ids:
                client.set_model_version_tag(name, s["version"], key, ",".join(ids))
            elif key in current:
                client.delete_model_version_tag(name, s["version"], key)
    return states


def status(name: str, requests: list[dict]) -> list[dict]:
    """Per request: id, created, reason, rows, the versions still trained on its rows (with their aliases),
    and the versions registered since without them."""
    try:
        states = version_states(name, requests)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        states = []  # no model registered yet
    return [{"id": q["id"], "created": q["created"], "reason": q.get("reason"), "rows": len(q["rows"]),
             "versions_containing": [{"version": s["version"], "aliases": s["aliases"]} for s in states
                                     if q["id"] in s["contains"]],
             "clean_versions": [s["version"] for s in states if q["id"] in s["clean_of"]]} for q in requests]


def record_request(request: dict) -> str:
    """The request as an MLflow run of the active experiment (tags and the request JSON, without any text)."""
    with mlflow.start_run(run_name=f"forget-{request['id']}",
                          tags={"ft_pipeline.erasure_request": request["id"],
                                "ft_pipeline.erasure_rows": str(len(request["rows"]))}) as run:
        mlflow.log_dict(request, "erasure_request.json")
    return run.info.run_id


def scrub_artifacts(experiment_id: str, found: set[str]) -> list[str]:
    """Replace each evaluation run's report artifacts that hold an erased text with a scrubbed copy (the same
    path). Returns "run_id/path" of each replaced artifact."""
    from ft_pipeline.erasure.requests import scrub_text

    if not found:
        return []
    client, out = mlflow.MlflowClient(), []
    runs = client.search_runs([experiment_id], "tags.`dagster.asset_key` = 'evaluation_report'", max_results=50000)
    for run in runs:
        present = {a.path for a in client.list_artifacts(run.info.run_id)}
        for path in REPORT_ARTIFACTS:
            if path not in present:
                continue
            text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/{path}")
            if (new := scrub_text(text, found)) != text:
                client.log_text(run.info.run_id, new, path)
                out.append(f"{run.info.run_id}/{path}")
    return out
