"""OpenAI's stored chat completions: what `store: true` (or `--store all`) keeps, and the five endpoints that read
and change it: list (`model`, `metadata[KEY]=VALUE`, `after`, `limit`, `order`), retrieve, its messages, update
(metadata only; `review` and `correction` in it record a verdict) and delete. The store is traffic.store's
SQLite database, opened on first use."""

from __future__ import annotations

import json
import logging
import threading
import time

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from ft_pipeline.serving.config import ServeConfig
from ft_pipeline.serving.protocol import ApiError, ChatRequest, read_metadata
from ft_pipeline.traffic import capture
from ft_pipeline.traffic.capture import verdict_from_metadata
from ft_pipeline.traffic.store import CompletionStore, NotFound

log = logging.getLogger("ft_pipeline.serving")

_LIST_PARAMS = {"model", "after", "limit", "order"}


class Stored:
    """The server's handle on the store: opened on first use (a server nobody asks to store never creates it)."""

    def __init__(self, cfg: ServeConfig, store: CompletionStore | None = None):
        self.cfg, self._store, self._lock = cfg, store, threading.Lock()

    @property
    def store(self) -> CompletionStore:
        with self._lock:
            if self._store is None:
                self._store = CompletionStore(self.cfg.store_path, self.cfg.store_retention_days, self.cfg.store_sync)
            return self._store

    def wanted(self, req: ChatRequest) -> bool:
        return self.cfg.store == "all" or (self.cfg.store == "requested" and bool(req.store))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def keep(self, req: ChatRequest, head: dict, served, answer: str, reason: str, n_prompt: int, n: int,
             started: float, mean_logprob: float | None) -> None:
        """Store one finished completion (in the request's thread; returns after the commit). A failure is the
        request's failure when the client asked for store=true; under `--store all` it is only logged."""
        try:
            rec = capture.record(
                id=head["id"], created=head["created"], model=req.model, registered_model=served.name,
                version=served.version, messages=[m.model_dump(exclude_none=True) for m in req.messages],
                answer=answer, finish_reason=reason, prompt_tokens=n_prompt, completion_tokens=n,
                latency_ms=round((time.monotonic() - started) * 1000, 2), mean_logprob=mean_logprob,
                metadata=dict(req.meta), response_format=answered_format(req), requested=bool(req.store),
                params={k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p), ("seed", req.seed),
                                          ("max_tokens", req.budget()), ("stop", req.stop)) if v is not None})
            self.store.insert(rec)
        except Exception as e:
            if req.store:
                log.exception("storing %s failed", head["id"])
                raise ApiError(500, f"The completion was generated but could not be stored: {type(e).__name__}: "
                                    f"{e}", type="server_error", code="store_failed") from None
            log.exception("storing %s (--store all) failed", head["id"])


def answered_format(req: ChatRequest) -> dict | None:
    """The response_format the answer was generated under, as JSON: the request's own, or the registered schema
    `--default-response-format registered` gave a request that named none (so traffic_drift's schema-valid rate
    counts those answers too); None for free text."""
    if req.response_format is not None:
        return req.response_format
    fmt = req._format
    if fmt is None or not fmt.constrained:
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict}}


def completion_object(row: dict) -> dict:
    """A stored completion as OpenAI returns it (a chat.completion with `metadata` and the request's settings),
    and what this server adds under `ft_pipeline`: the version that answered, latency, mean token
    log-probability, redactions made at capture, and the review."""
    params = row["params"] or {}
    return {
        "id": row["id"], "object": "chat.completion", "created": row["created"], "model": row["model"],
        "system_fingerprint": f"{row['registered_model']}/{row['version']}",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": row["answer"], "refusal": None},
                     "logprobs": None, "finish_reason": row["finish_reason"]}],
        "usage": {"prompt_tokens": row["prompt_tokens"], "completion_tokens": row["completion_tokens"],
                  "total_tokens": row["prompt_tokens"] + row["completion_tokens"]},
        "metadata": row["metadata"], "response_format": row["response_format"], "service_tier": None,
        "temperature": params.get("temperature"), "top_p": params.get("top_p"), "seed": params.get("seed"),
        "ft_pipeline": {"registered_model": row["registered_model"], "version": row["version"],
                        "latency_ms": row["latency_ms"], "mean_logprob": row["mean_logprob"],
                        "redactions": row["redactions"], "stored": "requested" if row["requested"] else "all",
                        "review": row["review"], "correction": row["correction"], "reviewer": row["reviewer"],
                        "reviewed_at": row["reviewed_at"]},
    }


def _page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


def _paging(q, allowed: set[str]) -> tuple[int, str, str | None]:
    """limit (1..100, default 20), order (asc|desc, default asc) and after from the query; 400 otherwise."""
    for key in q.keys():
        if key not in allowed and not (key.startswith("metadata[") and "metadata" in allowed):
            raise ApiError(400, f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")
    raw = q.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise ApiError(400, f"Invalid 'limit': expected an integer from 1 to 100, got '{raw[:20]}'.", param="limit",
                       code="invalid_value")
    order = q.get("order", "asc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid 'order': expected 'asc' or 'desc', got '{order[:20]}'.", param="order",
                       code="invalid_value")
    return int(raw), order, q.get("after") or None


def metadata_filter(q) -> dict[str, str]:
    """`metadata[KEY]=VALUE` pairs of the query (the openai client's form), within OpenAI's limits."""
    md = {}
    for key, value in q.multi_items():
        if key == "metadata" or (key.startswith("metadata") and not (key.startswith("metadata[") and key.endswith("]")
                                                                     and len(key) > len("metadata[]"))):
            raise ApiError(400, f"Invalid '{key}': filter by metadata as metadata[KEY]=VALUE.", param="metadata",
                           code="invalid_value")
        if key.startswith("metadata["):
            md[key[len("metadata["):-1]] = value
    return read_metadata(md, verdict=False) if md else {}


def add_routes(app: FastAPI, stored: Stored, check_key) -> None:
    auth = [Depends(check_key)]

    async def call(fn, *args, **kw):
        try:
            return await run_in_threadpool(fn, *args, **kw)
        except NotFound as e:
            raise ApiError(404, str(e), code="not_found") from None

    @app.get("/v1/chat/completions", dependencies=auth)
    async def list_completions(request: Request):
        q = request.query_params
        limit, order, after = _paging(q, _LIST_PARAMS | {"metadata"})
        md = metadata_filter(q)
        try:
            rows, more = await run_in_threadpool(stored.store.list, q.get("model") or None, md, after, limit, order)
        except NotFound as e:
            raise ApiError(400, str(e), param="after", code="invalid_value") from None
        return _page([completion_object(r) for r in rows], more)

    @app.get("/v1/chat/completions/{completion_id}", dependencies=auth)
    async def retrieve(completion_id: str):
        return completion_object(await call(stored.store.get, completion_id))

    @app.get("/v1/chat/completions/{completion_id}/messages", dependencies=auth)
    async def messages(completion_id: str, request: Request):
        limit, order, after = _paging(request.query_params, {"after", "limit", "order"})
        row = await call(stored.store.get, completion_id)
        items = [{"id": f"{completion_id}-{i}", "role": m["role"], "content": m["content"], "name": m.get("name"),
                  "content_parts": None} for i, m in enumerate(row["messages"])]
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [m["id"] for m in items]
            if after not in ids:
                raise ApiError(400, f"No message found with id '{after}' (the 'after' cursor).", param="after",
                               code="invalid_value")
            items = items[ids.index(after) + 1:]
        return _page(items[:limit], len(items) > limit)

    @app.post("/v1/chat/completions/{completion_id}", dependencies=auth)
    async def update(completion_id: str, request: Request):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"We could not parse the JSON body of your request: {e}.",
                           code="invalid_json") from None
        if not isinstance(body, dict) or "metadata" not in body:
            raise ApiError(400, "Missing required parameter: 'metadata'.", param="metadata",
                           code="missing_required_parameter")
        if extra := sorted(set(body) - {"metadata"}):
            raise ApiError(400, f"Unknown parameter: '{extra[0]}'. Only 'metadata' of a stored chat completion can "
                                "be updated.", param=extra[0], code="unknown_parameter")
        md = read_metadata(body["metadata"], creating=False)
        verdict = verdict_from_metadata(md)
        try:
            row = await call(stored.store.update_metadata, completion_id, md, verdict, md.get("reviewer") or "api")
        except ValueError as e:  # review: corrected with no correction, now or before
            raise ApiError(400, f"Invalid 'metadata.review': {e}.", param="metadata.review",
                           code="invalid_value") from None
        return completion_object(row)

    @app.delete("/v1/chat/completions/{completion_id}", dependencies=auth)
    async def delete(completion_id: str):
        await call(stored.store.delete, completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}
