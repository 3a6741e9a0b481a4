"""The monitoring job's reads and writes in the prediction store: the current window of logged
predictions (joined with outcomes and interventions), labelled rows for a retrain, the
monitoring_runs log of every decision and the scheduled_runs log of every due time of
`riskloop schedule`. Tables are serving.store's; this is I/O only."""

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
    dialect_insert,
    interventions,
    make_engine,
    monitoring_runs,
    now_utc,
    outcomes,
    predictions,
    scheduled_runs,
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


NEWEST_FIRST = (predictions.c.created_at.desc(), predictions.c.prediction_id.desc())


def _since(since: datetime | None) -> list[sa.ColumnElement[bool]]:
    return [] if since is None else [predictions.c.created_at >= as_utc(since)]


def _window_query(*where: sa.ColumnElement[bool]) -> sa.Select:
    intervened = (
        sa.select(sa.literal(1))
        .where(interventions.c.prediction_id == predictions.c.prediction_id)
        .exists()
    )
    return (
        sa.select(
            predictions.c.prediction_id, predictions.c.created_at, predictions.c.model_version,
            predictions.c.customer_id, predictions.c.inputs, predictions.c.probability,
            predictions.c.risk_score, predictions.c.risk_band, outcomes.c.defaulted,
            outcomes.c.observed_at, intervened.label("intervened"),
        )
        .select_from(predictions.outerjoin(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id))
        .where(*where)
        .order_by(*NEWEST_FIRST)
    )  # fmt: skip


def _oldest_kept(conn: sa.Connection, last_n: int | None,
                 since: datetime | None) -> list[sa.ColumnElement[bool]]:  # fmt: skip
    """The window, sampled or whole, as a range instead of a LIMIT: the last_n-th newest
    prediction, found on the (created_at, prediction_id) index alone, bounds it (nothing when
    the store holds fewer).
    A sample filtered over a LIMITed subquery made the store sort every row of the window,
    inputs and all: over 15 minutes for 10M rows in SQLite, against seconds this way."""
    if last_n is None:
        return []
    key = (predictions.c.created_at, predictions.c.prediction_id)
    edge = conn.execute(
        sa.select(*key).where(*_since(since)).order_by(*NEWEST_FIRST).offset(last_n - 1).limit(1)
    ).first()
    if edge is None:
        return []
    at, pid = edge
    # (created_at, prediction_id) >= edge, spelled so the index serves the range
    return [key[0] >= at, sa.or_(key[0] > at, key[1] >= pid)]


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


# A window sample is the rows whose prediction id has these hex characters below a cut: the
# ids' random part (UUIDv7 after its clock and version, a batch id's hash), so the sample
# is uniform, the same on every run, and chosen by the store without sending the window here.
SAMPLE_CHARS = slice(20, 24)
_SAMPLE_SPAN = 16 ** (SAMPLE_CHARS.stop - SAMPLE_CHARS.start)


def sample_cut(fraction: float) -> str:
    """The hex prefix bound that keeps about `fraction` of ids."""
    width = SAMPLE_CHARS.stop - SAMPLE_CHARS.start
    return f"{min(max(round(fraction * _SAMPLE_SPAN), 1), _SAMPLE_SPAN - 1):0{width}x}"


def in_sample(prediction_id: str, cut: str) -> bool:
    """The store's sampling rule, in Python (tests hold the two equal)."""
    return prediction_id[SAMPLE_CHARS] < cut


def window_size(engine: sa.Engine, last_n: int | None, since: datetime | None) -> int:
    """How many predictions the window holds, counted in the store (an outcome is one per
    prediction, so the join adds no rows: the predictions are counted alone, on the index)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(sa.func.count()).select_from(predictions).where(*_since(since))
        ).scalar_one()
    return int(rows if last_n is None else min(rows, last_n))


def load_window(engine: sa.Engine, last_n: int | None, since: datetime | None,
                fraction: float | None = None) -> pd.DataFrame:  # fmt: skip
    """The newest predictions (at most last_n, none before since), oldest first: one column per
    logged model input plus META_COLUMNS; `defaulted` is NaN where no outcome arrived yet.
    `fraction` (< 1): only a uniform sample of about that share of them (`in_sample`)."""
    sampled = []
    if fraction is not None and fraction < 1:
        start = SAMPLE_CHARS.start + 1  # SQL counts from 1
        sampled = [sa.func.substr(predictions.c.prediction_id, start,
                                  SAMPLE_CHARS.stop - SAMPLE_CHARS.start) < sample_cut(fraction)]  # fmt: skip
    with engine.connect() as conn:
        window = [*_since(since), *_oldest_kept(conn, last_n, since)]
        rows = conn.execute(_window_query(*window, *sampled)).all()
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


# --- scheduled runs: one row per due time; the write functions take the caller's transaction,
# so the scheduler plans and claims a due time under the lock it took in the same transaction


def last_due(conn: sa.Connection, job: str) -> datetime | None:
    """The latest due time of `job` that has a row (ran, missed or locked), if any."""
    query = sa.select(sa.func.max(scheduled_runs.c.due_at)).where(scheduled_runs.c.job == job)
    value = conn.execute(query).scalar_one()
    return None if value is None else as_utc(value)


def _detail(text: str | None) -> str | None:
    limit = scheduled_runs.c.detail.type.length or 1024
    return text if text is None or len(text) <= limit else text[: limit - 1] + "…"


def claim_due(conn: sa.Connection, job: str, due_at: datetime, status: str,
              detail: str | None = None) -> int | None:  # fmt: skip
    """Give a due time its row (status running, with started_at now, or locked); its id, or
    None if the due time already has one (a due time has one fate)."""
    started = now_utc() if status == "running" else None
    values = {"job": job, "due_at": as_utc(due_at), "status": status, "started_at": started,
              "detail": _detail(detail)}  # fmt: skip
    stmt = dialect_insert(conn, scheduled_runs).values(values)
    if conn.execute(stmt.on_conflict_do_nothing(index_elements=["job", "due_at"])).rowcount != 1:
        return None
    query = sa.select(scheduled_runs.c.id).where(
        scheduled_runs.c.job == job, scheduled_runs.c.due_at == values["due_at"]
    )
    return int(conn.execute(query).scalar_one())


def record_missed(
    conn: sa.Connection, job: str, due_times: Sequence[datetime], detail: str
) -> None:
    """Rows with status missed for those due times that have none yet."""
    if not due_times:
        return
    rows = [{"job": job, "due_at": as_utc(t), "status": "missed", "detail": _detail(detail)}
            for t in due_times]  # fmt: skip
    stmt = dialect_insert(conn, scheduled_runs).on_conflict_do_nothing(
        index_elements=["job", "due_at"]
    )
    conn.execute(stmt, rows)


def finish_run(engine: sa.Engine, run_id: int, status: str, exit_code: int | None,
               detail: str | None) -> None:  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            sa.update(scheduled_runs)
            .where(scheduled_runs.c.id == run_id)
            .values(
                status=status, exit_code=exit_code, detail=_detail(detail), finished_at=now_utc()
            )
        )


def abandon_running(conn: sa.Connection, job: str) -> int:
    """Mark `job`'s runs still `running` as failed: called under the job's lock, so none of
    them is running any more (their scheduler died with them); how many there were."""
    stmt = (
        sa.update(scheduled_runs)
        .where(scheduled_runs.c.job == job, scheduled_runs.c.status == "running")
        .values(
            status="failed",
            finished_at=now_utc(),
            detail="the scheduler stopped before the job finished",
        )
    )
    return conn.execute(stmt).rowcount


def recent_runs(engine: sa.Engine, job: str, limit: int) -> list[dict[str, Any]]:
    """The `limit` latest due times of `job` and what became of them, newest first."""
    query = (
        sa.select(scheduled_runs)
        .where(scheduled_runs.c.job == job)
        .order_by(scheduled_runs.c.due_at.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [{k: as_utc(v) if isinstance(v, datetime) else v for k, v in r._mapping.items()}
            for r in rows]  # fmt: skip
