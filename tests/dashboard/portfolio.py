"""A synthetic served portfolio in a real prediction store (SQLite or PostgreSQL): predictions
over a span of days with real records, outcomes for a share of them and interventions, written
by the store's own bulk paths. For the dashboard's tests and its 1M-row bench."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from serving.store import (
    dialect_insert,
    insert_predictions,
    insert_sqlite_values,
    interventions,
    make_engine,
    outcomes,
    prediction_row,
    sqlite_prediction_values,
    upgrade,
)

BANDS = ((20, "low"), (40, "medium"), (60, "high"), (101, "very_high"))
CHUNK = 20_000


@dataclass(frozen=True)
class Portfolio:
    predictions: pd.DataFrame  # one row per prediction, as stored (inputs as dicts)
    outcomes: pd.DataFrame  # prediction_id, customer_id, defaulted
    interventions: pd.DataFrame  # customer_id, action, risk_score, risk_band


def synthetic(records: pd.DataFrame, n: int, days: float = 30, seed: int = 0,
              labelled: float = 0.3, end: datetime | None = None) -> Portfolio:  # fmt: skip
    """`n` predictions whose inputs are `records`' rows (cycled), spread over `days` up to
    `end`; PD rises with the record's latest repayment status, so the realized AUC is real."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(UTC)
    picks = rng.integers(0, len(records), n)
    inputs = records.iloc[picks].reset_index(drop=True)
    status = pd.to_numeric(
        inputs.get("PAY_0", pd.Series(0, index=inputs.index)), errors="coerce"
    ).fillna(0)
    logit = -1.6 + 0.7 * status.to_numpy() + rng.normal(0, 0.8, n)
    prob = 1 / (1 + np.exp(-logit))
    score = np.clip(np.round(prob * 100), 0, 100).astype(int)
    band = np.select(
        [score < b for b, _ in BANDS], [name for _, name in BANDS], default="very_high"
    )
    decision = np.where(score < 30, "approve", np.where(score < 60, "review", "decline"))
    offsets = np.sort(rng.uniform(0, days * 86400, n))[::-1]
    created = [end - timedelta(seconds=float(s)) for s in offsets]
    customer = np.where(
        rng.random(n) < 0.5, [f"c{i}" for i in rng.integers(0, max(n // 4, 1), n)], None
    )
    ids = [uuid.UUID(int=int(rng.integers(0, 2**63)) << 64 | i).hex for i in range(n)]
    clean = inputs.astype(object).where(inputs.notna(), None).to_dict("records")
    frame = pd.DataFrame({
        "prediction_id": ids, "created_at": created, "request_id": None, "model_name": "credit-risk",
        "model_version": np.where(np.arange(n) < n // 3, "1", "2"), "customer_id": customer,
        "inputs": clean, "probability": prob, "risk_score": score, "risk_band": band, "decision": decision,
        "reasons": [[{"feature": "PAY_0", "value": float(s), "contribution": 0.5, "text": "recent late payment"}]
                    if s >= 1 else [] for s in status],
    })  # fmt: skip
    lab = rng.random(n) < labelled
    out = pd.DataFrame({"prediction_id": frame["prediction_id"][lab], "customer_id": frame["customer_id"][lab],
                        "defaulted": (rng.random(int(lab.sum())) < prob[lab]).astype(int)})  # fmt: skip
    risky = frame[(frame["risk_score"] >= 60) & frame["customer_id"].notna()].drop_duplicates(
        "customer_id"
    )
    inter = pd.DataFrame({"customer_id": risky["customer_id"], "prediction_id": risky["prediction_id"],
                          "risk_score": risky["risk_score"], "risk_band": risky["risk_band"],
                          "action": np.where(risky["risk_score"] >= 80, "restructuring_offer", "payment_reminder"),
                          "created_at": risky["created_at"]})  # fmt: skip
    return Portfolio(frame, out.reset_index(drop=True), inter.reset_index(drop=True))


def write(url: str, p: Portfolio) -> None:
    """Into a migrated store, through the bulk paths the log writer uses."""
    upgrade(url)
    engine = make_engine(url)
    try:
        rows = p.predictions.to_dict("records")
        for start in range(0, len(rows), CHUNK):
            part = rows[start : start + CHUNK]
            with engine.begin() as conn:
                if engine.dialect.name == "sqlite":
                    cache: dict = {}
                    insert_sqlite_values(conn, [sqlite_prediction_values(r, cache) for r in part])
                else:
                    insert_predictions(conn, [prediction_row(r) for r in part])
        now = datetime.now(UTC)
        with engine.begin() as conn:
            labels = [
                {**r, "observed_at": now, "received_at": now} for r in p.outcomes.to_dict("records")
            ]
            for start in range(0, len(labels), CHUNK):
                conn.execute(dialect_insert(conn, outcomes), labels[start : start + CHUNK])
            acts = p.interventions.to_dict("records")
            for start in range(0, len(acts), CHUNK):
                conn.execute(sa.insert(interventions), acts[start : start + CHUNK])
    finally:
        engine.dispose()
