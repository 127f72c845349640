"""What the serving tests and the serving benchmark share: a registry holding real versions of a tiny model,
and the server running in this process on a free loopback port."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

NAME = "ft-pipeline-adapter"


def register_tiny(tmp: Path, tiny_base: Path, adapter: Path | None, output_schema: dict | None = None) -> str:
    """A fresh MLflow store under `tmp` (MLFLOW_TRACKING_URI points at it) with version 1 = `adapter` on the
    tiny base (when given) and then the tiny base itself logged as a full model, champion on version 1.
    Both go through registry.log_adapter_model and register, as the pipeline's assets do; `output_schema` is
    registered with version 1 (registry.attach_output_schema, as registered_model does)."""
    import mlflow

    from ft_pipeline.registry import versions as registry

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("serve", artifact_location=(tmp / "artifacts").as_uri())
    base = {"source": "builtin", "path": str(tiny_base)}
    for model_dir, finetune in ([(adapter, "lora")] if adapter else []) + [(tiny_base, "full")]:
        with mlflow.start_run(experiment_id=exp) as run:
            info = registry.log_adapter_model(Path(model_dir), base, finetune=finetune)
        mv, _ = registry.register(info.model_uri, NAME, run.info.run_id, {})
        if str(mv.version) == "1" and output_schema is not None:
            registry.attach_output_schema(NAME, mv.version, run.info.run_id, output_schema)
    registry.set_champion(NAME, "1")
    return uri


def register_adapter(name: str, tiny_base: Path, adapter: Path) -> str:
    """`adapter` on the tiny base registered as version 1.. of another registered model `name` (another task),
    in the store register_tiny made, champion on the new version; returns that version."""
    import mlflow

    from ft_pipeline.registry import versions as registry

    exp = mlflow.get_experiment_by_name("serve").experiment_id
    with mlflow.start_run(experiment_id=exp) as run:
        info = registry.log_adapter_model(Path(adapter), {"source": "builtin", "path": str(tiny_base)})
    mv, _ = registry.register(info.model_uri, name, run.info.run_id, {})
    registry.set_champion(name, str(mv.version))
    return str(mv.version)


class ServerThread:
    """`with ServerThread(app) as base_url:` uvicorn serving `app` from a thread, on a loopback socket bound
    here (no port race), until the block ends."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 300
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


def start_cli_server(env: dict, *args: str, **popen) -> tuple:
    """`python -m ft_pipeline.cli serve ARGS` on a free loopback port (PORT in its environment), once /health
    answers 200 (the champion is loaded). Returns (process, base url)."""
    import subprocess
    import sys

    port = free_port()
    env = {**env, "PORT": str(port), "HOST": "127.0.0.1"}
    env.pop("FT_PIPELINE_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "ft_pipeline.cli", "serve", *args], env=env, **popen)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, f"{url}/health")
    return proc, url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc, health_url: str, timeout: float = 600) -> None:
    """Until `health_url` answers 200; RuntimeError (and the process killed) if it exits or time runs out."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{proc.args[:4]} did not come up (exit code {proc.poll()})")
        try:
            if httpx.get(health_url).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
