"""The monitoring job's reads and writes in the prediction store: the current window of logged
predictions (joined with outcomes and interventions), labelled rows for a retrain, and the
monitoring_runs log of every decision. Tables are serving.store's; this is I/O only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from riskloop.errors import MonitoringError
from riskloop.stores import redact
from serving.store import (
    as_utc,
    interventions,
    make_engine,
    monitoring_runs,
    now_utc,
    outcomes,
    predictions,
    to_jsonable,
    upgrade,
)

# Columns of a window frame besides the model inputs (which are expanded into columns).
META_COLUMNS = ("prediction_id", "created_at", "model_version", "customer_id", "probability",
                "risk_score", "risk_band", "defaulted", "observed_at", "intervened")  # fmt: skip


def open_store(url: str) -> sa.Engine:
    """An engine on a reachable store at the current schema, or a MonitoringError naming it."""
    engine = make_engine(url)
    try:
        upgrade(engine)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).strip().splitlines()[0]
        raise MonitoringError(f"prediction store {redact(url)} is unreachable: {reason}") from exc
    return engine


def _window_query(last_n: int | None, since: datetime | None) -> sa.Select:
    intervened = (
        sa.select(sa.literal(1))
        .where(interventions.c.prediction_id == predictions.c.prediction_id)
        .exists()
    )
    query = (
        sa.select(
            predictions.c.prediction_id, predictions.c.created_at, predictions.c.model_version,
            predictions.c.customer_id, predictions.c.inputs, predictions.c.probability,
            predictions.c.risk_score, predictions.c.risk_band, outcomes.c.defaulted,
            outcomes.c.observed_at, intervened.label("intervened"),
        )
        .select_from(predictions.outerjoin(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id))
        .order_by(predictions.c.created_at.desc(), predictions.c.prediction_id.desc())
    )  # fmt: skip
    if since is not None:
        query = query.where(predictions.c.created_at >= as_utc(since))
    if last_n is not None:
        query = query.limit(last_n)
    return query


def load_window(engine: sa.Engine, last_n: int | None, since: datetime | None) -> pd.DataFrame:
    """The newest predictions (at most last_n, none before since), oldest first: one column per
    logged model input plus META_COLUMNS; `defaulted` is NaN where no outcome arrived yet."""
    with engine.connect() as conn:
        rows = conn.execute(_window_query(last_n, since)).all()
    rows.reverse()
    inputs = pd.DataFrame.from_records([r.inputs or {} for r in rows])
    meta = pd.DataFrame.from_records(
        [{k: getattr(r, k) for k in META_COLUMNS} for r in rows], columns=list(META_COLUMNS)
    )
    meta["created_at"] = pd.to_datetime(meta["created_at"], utc=True)
    meta["defaulted"] = pd.to_numeric(meta["defaulted"], errors="coerce")
    meta["intervened"] = meta["intervened"].fillna(False).astype(int)
    return _join(inputs, meta)


def _join(inputs: pd.DataFrame, meta: pd.DataFrame) -> pd.DataFrame:
    """Logged inputs beside the store's columns; the store's win where both have one."""
    overlap = [c for c in inputs.columns if c in meta.columns]
    return pd.concat([inputs.drop(columns=overlap), meta], axis=1)


def labelled_rows(engine: sa.Engine, exclude: set[str]) -> pd.DataFrame:
    """Every prediction that has an outcome, with its inputs, minus those already collected."""
    query = (
        sa.select(
            predictions.c.prediction_id,
            predictions.c.created_at,
            predictions.c.customer_id,
            predictions.c.model_version,
            predictions.c.inputs,
            outcomes.c.defaulted,
            outcomes.c.observed_at,
        )
        .join(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id)
        .order_by(predictions.c.created_at, predictions.c.prediction_id)
    )
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if r.prediction_id not in exclude]
    inputs = pd.DataFrame.from_records([r.inputs or {} for r in rows])
    meta = pd.DataFrame.from_records(
        [
            {
                k: getattr(r, k)
                for k in (
                    "prediction_id",
                    "created_at",
                    "customer_id",
                    "model_version",
                    "defaulted",
                    "observed_at",
                )
            }
            for r in rows
        ],
        columns=[
            "prediction_id",
            "created_at",
            "customer_id",
            "model_version",
            "defaulted",
            "observed_at",
        ],
    )
    return _join(inputs, meta)


def record_run(engine: sa.Engine, row: Mapping[str, Any]) -> int:
    """Append one decision to monitoring_runs; returns its id."""
    values = {c.name: row.get(c.name) for c in monitoring_runs.columns if c.name != "id"}
    values["created_at"] = values["created_at"] or now_utc()
    values["reasons"] = to_jsonable(values["reasons"] or [])
    values["summary"] = to_jsonable(values["summary"] or {})
    with engine.begin() as conn:
        result = conn.execute(sa.insert(monitoring_runs).values(values))
        return int(result.inserted_primary_key[0])


def last_retrain_decision(engine: sa.Engine, within: timedelta) -> dict[str, Any] | None:
    """The newest run that decided to retrain within the given past interval, if any."""
    query = (
        sa.select(monitoring_runs)
        .where(monitoring_runs.c.retrain.is_(True), monitoring_runs.c.created_at >= now_utc() - within)
        .order_by(monitoring_runs.c.id.desc())
        .limit(1)
    )  # fmt: skip
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else {**row._mapping, "created_at": as_utc(row.created_at)}


def pending_retrain(engine: sa.Engine) -> dict[str, Any] | None:
    """The newest retrain decision not acted on yet."""
    query = (
        sa.select(monitoring_runs)
        .where(monitoring_runs.c.retrain.is_(True), monitoring_runs.c.acted_at.is_(None))
        .order_by(monitoring_runs.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else dict(row._mapping)


def mark_acted(engine: sa.Engine, run_id: int, action: Mapping[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(monitoring_runs)
            .where(monitoring_runs.c.id == run_id)
            .values(acted_at=now_utc(), action=to_jsonable(dict(action)))
        )


def list_runs(engine: sa.Engine, limit: int = 20) -> list[dict[str, Any]]:
    query = sa.select(monitoring_runs).order_by(monitoring_runs.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def require_columns(window: pd.DataFrame, required: Sequence[str]) -> None:
    """Logged traffic must carry every model input; name the ones that are missing."""
    missing = [c for c in required if c not in window.columns]
    partial = [c for c in required if c in window.columns and window[c].isna().any()]
    if missing or partial:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if partial:
            parts.append(f"column(s) {partial} missing in some rows")
        raise MonitoringError(
            "logged predictions cannot be compared with the reference: " + "; ".join(parts)
        )
