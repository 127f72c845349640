"""The server's settings, every one with an environment variable (what `make serve` passes) and a default."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env(name: str, default, cast=str):
    value = os.environ.get(name)
    return cast(value) if value not in (None, "") else default


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"  # loopback unless asked: the API has no TLS
    port: int = 8000
    # The registered models served (each name is also the model id clients send); empty: every registered model
    # in the tracking store that has `alias`, read again at each poll (one per task).
    models: tuple[str, ...] = ()
    alias: str = "champion"  # what a bare model id answers with, followed as it moves (each model its own)
    poll_s: float = 5.0  # how often the followed aliases are read from the registry
    # How long the first request of a batch waits for others to join it. 50 ms, not less: when a batch ends, its
    # clients' next requests need tens of ms to come back; a shorter window starts the requests already waiting
    # without them, and the clients split into groups that take turns (bench serve on the SmolLM2 champion: 3.6x
    # at 10 ms, 4.3x at 50 ms), while 50 ms is small beside a 135M model's second or two per answer on CPU.
    batch_window_ms: float = 50.0
    max_batch: int = 16  # the most requests generated together
    default_max_tokens: int = 256  # completion budget when a request names none (capped by the context)
    max_body_bytes: int = 1 << 20  # a larger request body is answered 413
    max_file_bytes: int = 512 << 20  # a larger upload to POST /v1/files is answered 413
    keep_versions: int = 3  # loaded versions kept in memory (the followed ones are always kept)
    api_key: str | None = None  # when set, every route but /health needs `Authorization: Bearer <key>`
    tracking_uri: str | None = None  # MLflow; default: the pipeline's store (MLFLOW_TRACKING_URI / FT_PIPELINE_HOME)
    log_level: str = "info"
    # Stored completions (traffic.store): `requested` keeps those sent with store=true, `all` every completion,
    # `none` none (store=true is then ignored). Kept `store_retention_days` days (<= 0: for ever), in
    # `store_path` (default <home>/traffic/completions.db); `store_sync` normal or full (see traffic/store.py).
    store: str = "requested"
    store_retention_days: float = 30.0  # OpenAI keeps stored completions 30 days
    store_path: str | None = None
    store_sync: str = "normal"
    # A request without response_format: `off` answers free (as OpenAI), `registered` applies the served
    # version's registered output schema as a strict json_schema (a version without one answers free).
    default_response_format: str = "off"

    @classmethod
    def from_env(cls, **overrides) -> "ServeConfig":
        """Defaults, then the environment, then `overrides` (the CLI's flags; a None there means not given)."""
        cfg = cls(
            host=_env("HOST", cls.host), port=_env("PORT", cls.port, int),
            models=_env("FT_PIPELINE_SERVE_MODELS", (), lambda v: tuple(n.strip() for n in v.split(",") if n.strip())),
            poll_s=_env("FT_PIPELINE_SERVE_POLL_S", cls.poll_s, float),
            batch_window_ms=_env("FT_PIPELINE_SERVE_BATCH_WINDOW_MS", cls.batch_window_ms, float),
            max_batch=_env("FT_PIPELINE_SERVE_MAX_BATCH", cls.max_batch, int),
            default_max_tokens=_env("FT_PIPELINE_SERVE_MAX_TOKENS", cls.default_max_tokens, int),
            max_body_bytes=_env("FT_PIPELINE_SERVE_MAX_BODY_BYTES", cls.max_body_bytes, int),
            max_file_bytes=_env("FT_PIPELINE_SERVE_MAX_FILE_BYTES", cls.max_file_bytes, int),
            api_key=_env("FT_PIPELINE_API_KEY", None), store=_env("FT_PIPELINE_STORE", cls.store),
            store_retention_days=_env("FT_PIPELINE_STORE_RETENTION_DAYS", cls.store_retention_days, float),
            store_path=_env("FT_PIPELINE_STORE_PATH", None), store_sync=_env("FT_PIPELINE_STORE_SYNC", cls.store_sync),
            default_response_format=_env("FT_PIPELINE_SERVE_DEFAULT_RESPONSE_FORMAT", cls.default_response_format))
        for k, v in overrides.items():
            if v is not None and v != []:
                setattr(cfg, k, tuple(v) if k == "models" else v)
        if cfg.max_batch < 1 or cfg.poll_s <= 0 or cfg.batch_window_ms < 0:
            raise ValueError("max_batch must be >= 1, poll_s > 0 and batch_window_ms >= 0")
        if cfg.store not in ("requested", "all", "none") or cfg.store_sync.lower() not in ("normal", "full"):
            raise ValueError("store must be requested, all or none, and store_sync normal or full")
        if cfg.default_response_format not in ("off", "registered"):
            raise ValueError(f"default_response_format must be off or registered, not {cfg.default_response_format!r}")
        return cfg
