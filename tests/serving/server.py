"""A real champion, a real bento and a real `bentoml serve` process for the HTTP tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from pipelines.materialize import online_rows
from riskloop.settings import Params
from serving.store import PredictionStore, make_engine, upgrade
from tests.conftest import ROOT, stratified_sample
from tests.modelling import fit_small_model, register_champion
from training.model import CreditRiskModel

KEYS = {
    "main": "k-main-0123456789",
    "old": "k-old-abcdef",
    "rate": "k-rate-xyz",
    "fuzz": "k-fuzz-1",
    "outage": "k-outage-1",
}
RATE_LIMIT = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_champion(
    state: Path, raw: pd.DataFrame, params: Params
) -> tuple[CreditRiskModel, pd.DataFrame]:
    """A small monotone model on a sample, registered and promoted in a fresh MLflow store."""
    sample = stratified_sample(raw, params.data.target, 4000)
    model, parts = fit_small_model(sample, params, 60, ("train",), max_depth=3, learning_rate=0.1)
    register_champion(state, model, params, parts["test"])
    return model, pd.concat([parts["valid"], parts["test"]], ignore_index=True)


def build_bento(state: Path, bento_home: Path) -> None:
    env = {**os.environ, "RISKLOOP_STATE_DIR": str(state), "BENTOML_HOME": str(bento_home),
           "BENTOML_DO_NOT_TRACK": "true", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(
        [sys.executable, "-m", "pipelines.bento"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


def load_online_features(db_url: str, customers: pd.DataFrame, params: Params) -> None:
    upgrade(db_url)
    PredictionStore(make_engine(db_url)).upsert_online_features(
        online_rows(customers, params, "test")
    )


class Server:
    def __init__(
        self,
        bento_home: Path,
        state: Path,
        db_url: str,
        extra_env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self.env = {**os.environ, "BENTOML_HOME": str(bento_home), "BENTOML_DO_NOT_TRACK": "true",
                    "RISKLOOP_STATE_DIR": str(state), "DATABASE_URL": db_url, "SPOOL_DIR": str(state / "spool"),
                    "API_KEYS": ",".join(KEYS.values()), "RATE_LIMIT_MAX": str(RATE_LIMIT),
                    "RATE_LIMIT_WINDOW": "3600", "ENABLE_INTERVENTIONS": "true", "AUTO_TRIGGER_THRESHOLD": "50",
                    "CORS_ORIGINS": "https://app.example.com", "SHUTDOWN_DRAIN_S": "1", "AUTH_FAILURES_MAX": "100000",
                    "HEADER_TIMEOUT_S": "2", "BODY_TIMEOUT_S": "5",
                    "PYTHONWARNINGS": "ignore", **(extra_env or {})}  # fmt: skip
        self.log = open(state / f"serve-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "bentoml"), "serve", "riskloop:latest", "--port", str(self.port),
             "--host", host], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)  # fmt: skip
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # never leave a half-started server behind
            raise

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"bentoml serve exited: {Path(self.log.name).read_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(Path(self.log.name).read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # graceful: the writer flushes on shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))
