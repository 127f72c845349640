"""The MLflow resource on a fresh SQLite store opened by several processes at once, as a backfill's runs do."""

import subprocess
import sys


def test_processes_setting_up_a_fresh_sqlite_store_together_all_succeed(tmp_path):
    # Without the lock in MlflowTracking.setup, 3 of 4 such processes failed here on every try (mlflow creating
    # its tables twice: "table ... already exists", or alembic's "Online migration expected to match one row").
    (tmp_path / "m").mkdir()
    code = ("from ft_pipeline.resources import MlflowTracking; "
            f"print(MlflowTracking(tracking_uri='sqlite:///{tmp_path}/m/mlflow.db', "
            f"artifact_root='{tmp_path}/a').setup())")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-1500:] for _, err in results]
    assert {out.strip() for out, _ in results} == {"1"}  # one experiment, the same for all
