"""A real champion, a real bento and a real `bentoml serve` process for the HTTP tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import stack
from pipelines.materialize import online_rows
from riskloop.errors import RiskloopError
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
        wait_http(self.proc, self.url + "/readyz", Path(self.log.name), "bentoml serve", timeout)

    def stop(self) -> None:
        stack.stop_group(self.proc, 30)  # graceful first: the writer flushes on shutdown
        self.log.close()


def wait_until(cond, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_http(proc: subprocess.Popen, url: str, log: Path, what: str, timeout: float) -> None:
    """Until `url` answers 200 (pipelines/stack.py's wait), with the process's log tail when
    it exits or time runs out."""
    try:
        stack.wait_http(url, timeout, lambda: proc.poll() is None)
    except RiskloopError as exc:
        raise RuntimeError(f"{what}: {exc}\n{log.read_text()[-3000:]}") from None


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))
