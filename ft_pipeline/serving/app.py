"""The FastAPI app: POST /v1/chat/completions (plain and streamed as server-sent events), GET /v1/models,
GET /health; the API key check; every error as OpenAI's error JSON. `serve` runs it under uvicorn."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ft_pipeline.serving.batching import MASK_STATS, Batcher, Job
from ft_pipeline.serving.catalog import Catalog
from ft_pipeline.serving.config import ServeConfig
from ft_pipeline.serving.finetuning_routes import FineTuning
from ft_pipeline.serving.finetuning_routes import add_routes as add_finetuning_routes
from ft_pipeline.serving.models import ModelNotFound, NotReady, Served, registered_format
from ft_pipeline.serving.protocol import ApiError, ChatRequest, context_error, format_error, parse_request
from ft_pipeline.serving.stored import Stored, add_routes
from ft_pipeline.structured.formats import FormatError

log = logging.getLogger("ft_pipeline.serving")

VERSION_HEADER = "x-ft-pipeline-model-version"


def _error(status: int, message: str, type: str = "invalid_request_error", param=None, code=None) -> JSONResponse:
    return JSONResponse(ApiError(status, message, type, param, code).body(), status_code=status)


def _prepare(served: Served, req: ChatRequest, default_max_tokens: int) -> tuple[list[int], int, object]:
    """The prompt's token ids (the model's own chat template, as in training and evaluation), the completion
    budget and the matcher of its response_format (compiled here, in the request's thread, so a slow schema
    never holds up the generation thread); 400 when they do not fit the model's context, the template refuses
    the conversation or the schema does not compile."""
    from jinja2.exceptions import TemplateError

    from ft_pipeline.evaluation.scoring import chat_prompt_ids

    # "developer" is OpenAI's newer name for "system"; chat templates know only the older one.
    conv = [{"role": "system" if m.role == "developer" else m.role, "content": m.content} for m in req.messages]
    try:
        ids = chat_prompt_ids(served.tokenizer, [conv])[0]
    except TemplateError as e:
        raise ApiError(400, f"The model's chat template refused these messages: {e}", param="messages") from None
    if (err := context_error(served.max_context, len(ids), req.budget())) is not None:
        raise err
    try:
        matcher = served.grammars().matcher(req.format) if req.format.constrained else None
    except FormatError as e:
        raise format_error(e) from None
    return ids, req.budget() or min(default_max_tokens, served.max_context - len(ids)), matcher


def _job(served: Served, req: ChatRequest, ids: list[int], budget: int, matcher=None,
         want_logprob: bool = False) -> tuple[Job, asyncio.Queue]:
    """A job for the generation thread and the queue its events arrive on, in this event loop."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def emit(*event):
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down and nobody is waiting
            pass

    temperature = 1.0 if req.temperature is None else req.temperature
    job = Job(served, ids, budget, emit, temperature=temperature, top_p=req.top_p or 1.0, seed=req.seed,
              stop=tuple(req.stop or ()), stream=bool(req.stream), matcher=matcher, want_logprob=want_logprob)
    return job, events


def create_app(cfg: ServeConfig, store: Catalog | None = None, batcher: Batcher | None = None,
               stored: Stored | None = None, finetuning: FineTuning | None = None) -> FastAPI:
    store = store or Catalog(cfg.models, cfg.alias, cfg.poll_s, cfg.keep_versions)
    # A job's `ft:` model loads onto the catalog's bases: a base shared with the tasks served is loaded once.
    finetuning = finetuning or FineTuning(max_file_bytes=cfg.max_file_bytes, keep_versions=cfg.keep_versions,
                                          load=store.bases.load)

    def resolve(model_id: str) -> Served:
        """A fine-tuning job's `ft:` model, or the served registered model's id."""
        return finetuning.served(model_id) if model_id.startswith("ft:") else store.get(model_id)
    batcher = batcher or Batcher(cfg.batch_window_ms / 1000, cfg.max_batch)
    stored = stored or Stored(cfg)

    @asynccontextmanager
    async def lifespan(app):
        await run_in_threadpool(store.start)
        batcher.start()
        for name, now in store.current().items():
            log.info("serving %s@%s (%s), following it every %gs", name, cfg.alias,
                     f"version {now[cfg.alias]}" if cfg.alias in now else "no version yet", cfg.poll_s)
        yield
        store.stop()
        batcher.stop()
        stored.close()

    app = FastAPI(title="ft_pipeline", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.store, app.state.batcher, app.state.config, app.state.stored = store, batcher, cfg, stored

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ModelNotFound)
    async def _not_found(request, e):
        return _error(404, str(e), param="model", code="model_not_found")

    @app.exception_handler(NotReady)
    async def _not_ready(request, e):
        return _error(503, str(e), type="server_error", code="model_not_ready")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e):
        return _error(e.status_code, f"{request.method} {request.url.path}: {e.detail}")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        return _error(400, str(e))

    @app.exception_handler(Exception)
    async def _server_error(request, e):
        log.exception("unexpected error on %s", request.url.path)
        return _error(500, f"{type(e).__name__}: {e}", type="server_error")

    def check_key(request: Request) -> None:
        if not cfg.api_key:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise ApiError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>' with the "
                                "FT_PIPELINE_API_KEY the server was started with.", code="invalid_api_key")
        if not hmac.compare_digest(header[7:].strip().encode(), cfg.api_key.encode()):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        limit = cfg.max_body_bytes
        declared = request.headers.get("content-length", "")
        too_big = ApiError(413, f"The request body is larger than this server's limit of {limit} bytes.",
                           code="request_too_large")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    async def health():
        current = store.current()
        # ready: some model answers at the alias, and so does every model named with --model
        ready = any(cfg.alias in c for c in current.values()) and all(cfg.alias in current.get(n, {})
                                                                      for n in cfg.models)
        models = {n: {"version": c.get(cfg.alias), "aliases": c} for n, c in current.items()}
        return JSONResponse({"status": "ok" if ready else "no_model", "alias": cfg.alias, "models": models,
                             "last_error": store.last_error,
                             "mask": {"seconds": MASK_STATS.seconds, "tokens": MASK_STATS.tokens}},
                            status_code=200 if ready else 503)

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": await run_in_threadpool(lambda: store.listing() + finetuning.listing())}

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(check_key)])
    async def model(model_id: str):
        for row in await run_in_threadpool(lambda: store.listing() + finetuning.listing()):
            if row["id"] == model_id:
                return row
        raise ModelNotFound(f"The model '{model_id}' does not exist")

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(request: Request):
        started = time.monotonic()
        req = parse_request(await read_body(request))
        served = await run_in_threadpool(resolve, req.model)
        if cfg.default_response_format == "registered" and req.response_format is None \
                and (fmt := registered_format(served)) is not None:
            req._format = fmt
        ids, budget, matcher = await run_in_threadpool(_prepare, served, req, cfg.default_max_tokens)
        keep = stored.wanted(req)
        job, events = _job(served, req, ids, budget, matcher, want_logprob=keep)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model,
                "system_fingerprint": served.fingerprint}
        headers = {VERSION_HEADER: served.version}
        batcher.submit(job)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            on_done = None
            if keep:
                async def on_done(text, reason, n):
                    await run_in_threadpool(stored.keep, req, head, served, text, reason, len(ids), n, started,
                                            job.mean_logprob)
            return StreamingResponse(_sse(job, events, head, len(ids), include_usage, on_done), headers=headers,
                                     media_type="text/event-stream")
        parts = []
        while True:
            kind, *rest = await events.get()
            if kind == "delta":
                parts.append(rest[0])
            elif kind == "error":
                raise ApiError(500, rest[0], type="server_error")
            else:
                reason, n = rest
                break
        answer = "".join(parts)
        body = {**head, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                             "logprobs": None, "finish_reason": reason}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": n, "total_tokens": len(ids) + n}}
        if keep:  # committed before the answer goes out: an acknowledged completion is stored
            await run_in_threadpool(stored.keep, req, head, served, answer, reason, len(ids), n, started,
                                    job.mean_logprob)
        return JSONResponse(body, headers=headers)

    add_routes(app, stored, check_key)
    add_finetuning_routes(app, finetuning, check_key)
    return app


async def _sse(job: Job, events: asyncio.Queue, head: dict, n_prompt: int, include_usage: bool, on_done=None):
    """The completion as `chat.completion.chunk` events: the role first, then each piece of text as it is
    generated, the finish reason, the usage if asked for, and `data: [DONE]`. `on_done(text, reason, n)` (the
    store) runs before `[DONE]`: a client that saw `[DONE]` has its completion stored."""
    def chunk(delta: dict, reason=None, **extra) -> str:
        body = {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        parts = []
        while True:
            kind, *rest = await events.get()
            if kind == "delta":
                parts.append(rest[0])
                yield chunk({"content": rest[0]})
                continue
            if kind == "error":  # the status line has gone out already: the error travels as an event
                yield f"data: {json.dumps(ApiError(500, rest[0], type='server_error').body())}\n\n"
            else:
                reason, n = rest
                yield chunk({}, reason)
                if include_usage:
                    usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
                    body = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
                    yield f"data: {json.dumps(body)}\n\n"
                if on_done is not None:
                    try:
                        await on_done("".join(parts), reason, n)
                    except ApiError as e:
                        yield f"data: {json.dumps(e.body())}\n\n"
            break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled = True  # a client that went away mid-stream frees its row at the next token


def serve(cfg: ServeConfig) -> int:
    """Run the server in this process until it is stopped (Ctrl-C)."""
    import mlflow
    import uvicorn

    from ft_pipeline import settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mlflow.set_tracking_uri(cfg.tracking_uri or settings.mlflow_tracking_uri())
    which = ", ".join(cfg.models) if cfg.models else "every registered model"
    print(f"ft-pipeline serve: {which} @{cfg.alias} from {mlflow.get_tracking_uri()}\n"
          f"  OpenAI base_url: http://{cfg.host}:{cfg.port}/v1" + ("   (API key required)" if cfg.api_key else ""),
          flush=True)
    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0
