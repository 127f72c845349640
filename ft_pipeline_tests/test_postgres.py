"""Past one machine: the whole pipeline with Dagster's instance (runs, event log, schedules) on a real PostgreSQL
server started from Debian's packages for this test, and MLflow through a tracking server (`mlflow server`)
whose store and registry live in the same PostgreSQL."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ft_pipeline.settings import REPO_ROOT
from ft_pipeline_tests._env import isolated_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))[-1:]), None)
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):  # CI installs Debian's postgresql: a missing one is a failure there
            pytest.fail("initdb is missing: .ci/run installs Debian's postgresql")
        pytest.skip("needs PostgreSQL (apt-get install postgresql)")
    pytest.importorskip("dagster_postgres")
    # Not under pytest's tmp folder: that is private to its owner, and the server runs as `postgres` under root.
    root = Path(tempfile.mkdtemp(prefix="ft-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    # PostgreSQL refuses to run as root; as root, run it as Debian's `postgres` user.
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start",
                    "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        for db in ("dagster", "mlflow"):
            subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db],
                           check=True, capture_output=True)
        yield port
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """`mlflow server` on the Postgres database, serving artifacts from a local folder, as in the README."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                             f"postgresql+psycopg2://postgres@127.0.0.1:{postgres}/mlflow",
                             "--artifacts-destination", str(tmp_path / "mlflow-artifacts"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError as err:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("mlflow server did not start") from err
            time.sleep(1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pipeline_runs_with_dagster_and_mlflow_on_postgres(postgres, mlflow_server, tmp_path):
    port = postgres
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    # The documented deployment config (deploy/postgres/dagster.yaml), filled in through its env var.
    shutil.copyfile(REPO_ROOT / "deploy" / "postgres" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**isolated_env(tmp_path), "DAGSTER_HOME": str(dagster_home),
           "DAGSTER_PG_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{port}/dagster",
           "MLFLOW_TRACKING_URI": mlflow_server}
    run = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "run", "--preset",
                          str(REPO_ROOT / "configs" / "smoke.yaml")], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "registered: ft-pipeline-adapter version 1" in run.stdout
    assert not (dagster_home / "history").exists()  # nothing went to the SQLite default

    def sql(db, query):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-tAc", query],
                              check=True, capture_output=True, text=True).stdout.strip()

    # 3 drop ingests, the split (run first: an unchanged split retrains nothing), then training to registration
    assert int(sql("dagster", "select count(*) from runs where status = 'SUCCESS'")) == 5
    assert int(sql("dagster", "select count(*) from event_logs "
                              "where dagster_event_type = 'ASSET_MATERIALIZATION'")) >= 9
    assert sql("mlflow", "select alias, version from registered_model_aliases") == "champion|1"
    assert int(sql("mlflow", "select count(*) from runs where status = 'FINISHED'")) >= 8
    # Artifacts went through the server to its --artifacts-destination, not to a client-side folder.
    assert sql("mlflow", "select artifact_location from experiments where name = 'ft_pipeline'").startswith(
        "mlflow-artifacts:")
    assert list((tmp_path / "mlflow-artifacts").rglob("adapter_model.safetensors"))
    # A second process reads the same stores back: the champion predicts from the Postgres-backed registry.
    code = ("import mlflow; m = mlflow.pyfunc.load_model('models:/ft-pipeline-adapter@champion'); "
            "print(type(m.predict(['Where is my order?'])[0]).__name__)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "str", out.stderr[-2000:]
