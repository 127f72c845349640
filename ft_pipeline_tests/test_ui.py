"""The Dagster UI and the MLflow UI, started on loopback over the stores of a real pipeline run, as a person sees
them in headless Chromium: the asset graph, the evaluation report and the registered champion.
Screenshots land in $FT_PIPELINE_SCREENSHOTS (default: the test's tmp folder)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ft_pipeline.settings import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer within {seconds}s")


@pytest.fixture(scope="module")
def servers(smoke_home):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # CI installs chromium: a missing one is a failure there
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    tmp, env, run = smoke_home()  # a smoke run on a copy of the demo drops, in a folder of this module's own
    assert run.returncode == 0, run.stdout[-3000:]
    lines = subprocess.run([sys.executable, "-m", "ft_pipeline.cli", "env"], env=env, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    env.update(dict(line.split("=", 1) for line in lines))
    dport, mport = _free_port(), _free_port()
    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "mlflow"), "server", "--backend-store-uri", env["MLFLOW_BACKEND"],
                          "--default-artifact-root", env["MLFLOW_ARTIFACTS"], "--host", "127.0.0.1",
                          "--port", str(mport)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([str(bin_dir / "dagster"), "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
                          "-h", "127.0.0.1", "-p", str(dport)], env=env, cwd=env["DAGSTER_HOME"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
    ]
    try:
        _wait(f"http://127.0.0.1:{mport}/", procs[0])
        _wait(f"http://127.0.0.1:{dport}/server_info", procs[1])
        shots = Path(os.environ.get("FT_PIPELINE_SCREENSHOTS") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield f"http://127.0.0.1:{dport}", f"http://127.0.0.1:{mport}", shots
    finally:
        procs[0].terminate()
        os.killpg(procs[1].pid, 15)  # dagster dev runs the webserver and daemon as children
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # On a loaded machine dagster dev can take longer than a minute to stop its daemon and code
                # server; the test is over, so stop the whole group hard rather than fail its teardown.
                os.killpg(p.pid, 9) if p is procs[1] else p.kill()
                p.wait(timeout=60)


@pytest.fixture(scope="module")
def page(servers):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.set_default_timeout(60_000)
        # Dagster greets a new browser profile with a newsletter dialog that fades in after load; skip it
        # whenever it shows up in front of an action.
        pg.add_locator_handler(pg.get_by_text("Join the Dagster community"),
                               lambda: pg.get_by_role("button", name="Skip").click())
        yield pg
        browser.close()


def test_dagster_shows_the_asset_graph(servers, page):
    dagster, _, shots = servers
    page.goto(f"{dagster}/asset-groups")
    for group in ("data", "model", "evaluation", "registry"):
        page.get_by_text(group, exact=True).first.wait_for()
    # the asset list renders only the rows in view: tall enough for every top-level key and the tasks' folders
    page.set_viewport_size({"width": 1600, "height": 1800})
    page.goto(f"{dagster}/assets")
    for key in ("raw_examples", "cleaned_examples", "train_set", "holdout_set", "base_model", "lora_adapter",
                "preference_pairs", "preference_adapter", "evaluation_report", "registered_model"):
        page.get_by_text(key, exact=True).first.wait_for()
    page.screenshot(path=str(shots / "dagster_assets.png"))


def test_dagster_shows_the_evaluation_report(servers, page):
    dagster, _, shots = servers
    page.goto(f"{dagster}/assets/evaluation_report")
    page.get_by_text("tuned_field_accuracy", exact=True).first.wait_for()  # metadata of the materialization
    page.screenshot(path=str(shots / "dagster_evaluation_metadata.png"))
    page.get_by_text("[Show Markdown]").first.click()
    page.get_by_text("Evaluation on 16 holdout examples").first.wait_for()
    for model in ("base", "tuned"):
        page.get_by_role("columnheader", name=model, exact=True).first.wait_for()
    page.screenshot(path=str(shots / "dagster_evaluation_report.png"))
    page.keyboard.press("Escape")
    page.goto(f"{dagster}/assets/evaluation_report?view=checks")
    page.get_by_text("beats_base_and_champion").first.wait_for()


def test_dagster_renders_the_evaluation_plots(servers, page):
    dagster, _, shots = servers
    page.goto(f"{dagster}/assets/evaluation_report")
    row = page.get_by_role("row").filter(has=page.get_by_text("plots", exact=True)).first
    row.get_by_text("[Show Markdown]").click()
    images = page.locator('img[src^="data:image/png;base64,"]')
    images.first.wait_for()
    assert images.count() == 2  # metric comparison and loss curve, inline as data URIs
    assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(2))
    page.screenshot(path=str(shots / "dagster_evaluation_plots.png"))
    page.keyboard.press("Escape")


def test_mlflow_shows_the_champion_version(servers, page):
    _, mlflow_url, shots = servers
    page.goto(f"{mlflow_url}/#/models/ft-pipeline-adapter")
    page.get_by_text("champion").first.wait_for()
    page.get_by_text("training_run_id").first.wait_for()
    page.screenshot(path=str(shots / "mlflow_registered_model.png"))
