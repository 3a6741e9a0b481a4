"""A running dashboard in front of a real `bentoml serve` and its store, for the browser tests
and the bench: the dashboard is started the way `make dashboard` starts it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.stack import stop_group
from tests.conftest import ROOT
from tests.serving.server import free_port, wait_http


class Dashboard:
    def __init__(self, state: Path, api_url: str, api_key: str, db_url: str,
                 extra_env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "API_BASE_URL": api_url, "API_KEY": api_key, "DATABASE_URL": db_url,
               "RISKLOOP_STATE_DIR": str(state), "PYTHONWARNINGS": "ignore", **(extra_env or {})}  # fmt: skip
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log_path = state / f"dashboard-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "riskloop", "dashboard", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60) -> None:
        wait_http(self.proc, self.url + "/_stcore/health", self.log_path, "the dashboard", timeout)

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        stop_group(self.proc, 15)
        self.log.close()
