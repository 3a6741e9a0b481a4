"""A real monitoring setup without the HTTP hop: a champion in a real MLflow store (carrying
its out-of-sample reference, as the train stage logs it) and a real prediction store (SQLite
or PostgreSQL) filled with traffic scored by that champion through the store's own write
path. Traffic is drawn from the validation split, independent of the reference (test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from monitoring.scenarios import apply, sample
from riskloop.settings import Params
from serving.store import (
    PredictionStore,
    insert_predictions,
    make_engine,
    prediction_row,
    upgrade,
)
from tests.conftest import ROOT
from tests.modelling import fit_small_model, register_champion
from training.model import CreditRiskModel


@dataclass
class Loop:
    work: Path  # the job's working directory: params.yaml, data/features, reports/
    state: Path
    db_url: str
    model: CreditRiskModel
    held_out: pd.DataFrame
    params: Params

    def env(self) -> dict[str, str]:
        env = {**os.environ, "RISKLOOP_STATE_DIR": str(self.state), "DATABASE_URL": self.db_url,
               "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}  # fmt: skip
        env.pop("MLFLOW_TRACKING_URI", None)
        return env

    def log_traffic(self, scenario: str, rows: int, seed: int, labelled: bool = True,
                    at: datetime | None = None, protected: bool = True,
                    version: str = "1") -> pd.DataFrame:  # fmt: skip
        """Score `rows` held-out rows under `scenario` with the champion and log them (and,
        if labelled, their real outcomes) the way the service does; `protected=False`: the
        application sent no protected attribute; `version`: the model version that served."""
        src = sample(self.held_out, rows, seed)
        shifted = apply(scenario, src, seed, self.params.data, self.params.features)
        p = self.model.predict_proba(shifted[self.model.input_columns].astype("float64"))
        at = at or datetime.now(UTC)
        ids = [uuid.uuid4().hex for _ in range(rows)]
        kept = [c for c in self.params.data.feature_columns
                if protected or c not in self.params.data.protected_columns]  # fmt: skip
        records = shifted[kept].to_dict("records")
        customers = src[self.params.data.id_column].astype(str).tolist()
        logged = [prediction_row({
            "prediction_id": pid, "created_at": at + timedelta(milliseconds=i), "model_name": "credit-risk",
            "model_version": version, "customer_id": cid, "inputs": rec, "probability": float(pi),
            "risk_score": round(100 * pi),
            "risk_band": "low", "decision": "approve", "reasons": None,
        }) for i, (pid, rec, pi, cid) in enumerate(zip(ids, records, p, customers, strict=True))]  # fmt: skip
        engine = make_engine(self.db_url)
        try:
            with engine.begin() as conn:
                insert_predictions(conn, logged)
            y = src[self.params.data.target].astype(int).tolist()
            if labelled:
                PredictionStore(engine).record_outcomes(
                    [
                        {"prediction_id": pid, "defaulted": yi}
                        for pid, yi in zip(ids, y, strict=True)
                    ]
                )
        finally:
            engine.dispose()
        return pd.DataFrame({"prediction_id": ids, "probability": p, "defaulted": y})

    def monitor(self, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
        proc = subprocess.run([sys.executable, "-m", "pipelines.monitor", "--no-act", *args],
                              cwd=self.work, env=self.env(), capture_output=True, text=True,
                              timeout=600)  # fmt: skip
        payload = None
        for line in proc.stdout.splitlines():
            if line.startswith("json: "):
                payload = json.loads((self.work / line.removeprefix("json: ")).read_text())
        if payload is None:
            for line in proc.stdout.splitlines():
                if line.startswith("decision: ") and line.endswith(".json"):
                    payload = json.loads((self.work / line.removeprefix("decision: ")).read_text())
        return proc, payload

    def runs(self) -> list[dict]:
        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return [
                    dict(r._mapping)
                    for r in conn.execute(sa.text("SELECT * FROM monitoring_runs ORDER BY id"))
                ]
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def champion(raw, params, tmp_path_factory):
    """A small monotone champion on the full train split, its builder and the splits."""
    model, parts = fit_small_model(raw, params, 60, ("train",), max_depth=3, learning_rate=0.1)
    state = tmp_path_factory.mktemp("monitoring-state")
    register_champion(state, model, params, parts["test"])
    return model, parts, state


def make_loop(tmp_path: Path, champion, params: Params, db_url: str) -> Loop:
    """The job runs in `work` with nothing but params.yaml: it reads the champion from the
    registry, never from a DVC workspace."""
    model, parts, state = champion
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    own_state = tmp_path / "state"
    shutil.copytree(state, own_state)  # each test gets its own registry copy and workspace
    upgrade(db_url)
    return Loop(work, own_state, db_url, model, parts["valid"], params)
