"""A running dashboard in front of a real `bentoml serve` and its store, for the browser tests
and the bench: the dashboard is started the way `make dashboard` starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.serving.server import free_port


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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/_stcore/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(self.log_path.read_text()[-3000:])

    def logs(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
