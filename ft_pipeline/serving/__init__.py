"""Serving the registered model behind the OpenAI Chat Completions API (`ft-pipeline serve`).

- `models`: which registered version answers a model id, and following an alias (`champion`) as it moves.
- `batching`: one generation thread that collects requests arriving together and generates them as one batch.
- `app`: the FastAPI app (request validation, OpenAI-style errors, streaming) and `serve`, which runs it.

Serving is outside the asset graph and never imports dagster."""

from ft_pipeline.serving.config import ServeConfig

__all__ = ["ServeConfig", "serve"]


def serve(config: ServeConfig) -> int:
    from ft_pipeline.serving.app import serve as _serve

    return _serve(config)
