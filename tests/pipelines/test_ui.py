"""`make ui` follows MLFLOW_TRACKING_URI: a database store gets `mlflow ui` on it, a tracking
server is the UI already."""

from __future__ import annotations

import subprocess
import sys

from pipelines.ui import command
from tests.conftest import ROOT


def test_ui_follows_the_tracking_store(tmp_path):
    pg = "postgresql+psycopg2://riskloop@db:5432/mlflow"
    assert command(pg, None, 5001) == ["mlflow", "ui", "--backend-store-uri", pg, "--host",
                                       "127.0.0.1", "--port", "5001"]  # fmt: skip
    local = command("sqlite:////s/mlflow.db", "file:///s/mlartifacts", 5000)
    assert local[3] == "sqlite:////s/mlflow.db" and local[-2:] == ["--default-artifact-root",
                                                                   "file:///s/mlartifacts"]  # fmt: skip
    assert command("http://mlflow:5000", None, 5000) is None
    served = subprocess.run([sys.executable, "-m", "pipelines.ui"], cwd=ROOT, capture_output=True, text=True,
                            env={"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000", "PATH": ""},
                            check=True)  # fmt: skip
    assert "its UI is http://mlflow.internal:5000" in served.stdout
