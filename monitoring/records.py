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


def _frame(rows: Sequence[sa.Row], columns: Sequence[str]) -> pd.DataFrame:
    """Logged inputs expanded into columns beside the store's `columns` (the store's value
    wins where an input has the same name)."""
    inputs = pd.DataFrame.from_records([r.inputs or {} for r in rows])
    meta = pd.DataFrame.from_records([{k: getattr(r, k) for k in columns} for r in rows],
                                     columns=list(columns))  # fmt: skip
    meta["created_at"] = pd.to_datetime(meta["created_at"], utc=True)
    meta["defaulted"] = pd.to_numeric(meta["defaulted"], errors="coerce")
    overlap = [c for c in inputs.columns if c in meta.columns]
    return pd.concat([inputs.drop(columns=overlap), meta], axis=1)


def load_window(engine: sa.Engine, last_n: int | None, since: datetime | None) -> pd.DataFrame:
    """The newest predictions (at most last_n, none before since), oldest first: one column per
    logged model input plus META_COLUMNS; `defaulted` is NaN where no outcome arrived yet."""
    with engine.connect() as conn:
        rows = conn.execute(_window_query(last_n, since)).all()
    rows.reverse()
    frame = _frame(rows, META_COLUMNS)
    frame["intervened"] = frame["intervened"].fillna(False).astype(int)
    return frame


LABELLED_COLUMNS = ("prediction_id", "created_at", "customer_id", "model_version", "defaulted",
                    "observed_at")  # fmt: skip


def labelled_rows(engine: sa.Engine, exclude: set[str]) -> pd.DataFrame:
    """Every prediction that has an outcome, with its inputs, minus those already collected."""
    query = (
        sa.select(
            predictions.c.inputs,
            *(predictions.c[c] for c in LABELLED_COLUMNS if c in predictions.c),
            outcomes.c.defaulted,
            outcomes.c.observed_at,
        )
        .join(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id)
        .order_by(predictions.c.created_at, predictions.c.prediction_id)
    )
    with engine.connect() as conn:
        rows = [r for r in conn.execute(query) if r.prediction_id not in exclude]
    return _frame(rows, LABELLED_COLUMNS)


def record_run(engine: sa.Engine, row: Mapping[str, Any]) -> int:
    """Append one decision to monitoring_runs; returns its id."""
    values = {c.name: row.get(c.name) for c in monitoring_runs.columns if c.name != "id"}
    values["created_at"] = values["created_at"] or now_utc()
    values["reasons"] = to_jsonable(values["reasons"] or [])
    values["summary"] = to_jsonable(values["summary"] or {})
    with engine.begin() as conn:
        result = conn.execute(sa.insert(monitoring_runs).values(values))
        return int(result.inserted_primary_key[0])


def _latest_retrain(engine: sa.Engine, *where: sa.ColumnElement[bool]) -> dict[str, Any] | None:
    query = (
        sa.select(monitoring_runs)
        .where(monitoring_runs.c.retrain.is_(True), *where)
        .order_by(monitoring_runs.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    return None if row is None else {**row._mapping, "created_at": as_utc(row.created_at)}


def last_retrain_decision(engine: sa.Engine, within: timedelta) -> dict[str, Any] | None:
    """The newest run that decided to retrain within the given past interval, if any."""
    return _latest_retrain(engine, monitoring_runs.c.created_at >= now_utc() - within)


def pending_retrain(engine: sa.Engine) -> dict[str, Any] | None:
    """The newest retrain decision not acted on yet."""
    return _latest_retrain(engine, monitoring_runs.c.acted_at.is_(None))


def mark_acted(engine: sa.Engine, run_id: int, action: Mapping[str, Any]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(monitoring_runs)
            .where(monitoring_runs.c.id == run_id)
            .values(acted_at=now_utc(), action=to_jsonable(dict(action)))
        )


def require_columns(window: pd.DataFrame, required: Sequence[str]) -> None:
    """Logged traffic must carry every model input (protected attributes need not be among
    `required`); name the ones that are missing."""
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
