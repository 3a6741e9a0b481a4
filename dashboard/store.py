"""The prediction store, read-only, aggregated in the database: every page query returns at
most a few thousand rows (histograms, per-period counts), whatever the store holds, so the
dashboard's memory does not grow with the store; the database's work grows with the rows in
the chosen period (bench/RESULTS.md: the six Portfolio queries over 1M rows take ~11 s on
SQLite, ~5 s on PostgreSQL; over the default 7 days, ~1 s). Tables are serving/store.py's."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa

from riskloop.stores import normalize_db_url
from serving.store import as_utc, interventions, monitoring_runs, outcomes, predictions

Grain = Literal["hour", "day", "week"]
STATEMENT_TIMEOUT_MS = 30_000
HISTORY_ROWS = 200  # a customer's page lists at most this many of their predictions


class StoreUnavailable(Exception):
    """The store cannot be read (down, not created yet, not migrated)."""


def read_only_engine(url: str) -> sa.Engine:
    """SQLite opened without creating it and with query_only on; PostgreSQL sessions with
    default_transaction_read_only and a statement timeout: the dashboard cannot write."""
    parsed = sa.make_url(normalize_db_url(url, "DASHBOARD_STORE_URL"))
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            return conn

        return sa.create_engine("sqlite://", creator=connect, poolclass=sa.pool.QueuePool)
    options = f"-c default_transaction_read_only=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    return sa.create_engine(parsed, pool_pre_ping=True,
                            connect_args={"connect_timeout": 3, "options": options})  # fmt: skip


@dataclass(frozen=True)
class Filters:
    """What the Portfolio page narrows to: a period, a served version, a segment (a
    categorical record field's level, read from the logged inputs)."""

    since: datetime | None = None
    model_version: str | None = None
    segment: tuple[str, Any] | None = None

    def where(self, table: sa.Table = predictions) -> list[sa.ColumnElement[bool]]:
        out = []
        if self.since is not None:
            out.append(table.c.created_at >= self.since)
        if table is predictions and self.model_version:
            out.append(predictions.c.model_version == self.model_version)
        if table is predictions and self.segment is not None:
            column, value = self.segment
            field = predictions.c.inputs[column]
            out.append(field.as_string() == value if isinstance(value, str)
                       else field.as_float() == float(value))  # fmt: skip
        return out


def bucket(engine: sa.Engine, column: sa.ColumnElement, grain: Grain) -> sa.ColumnElement[str]:
    """The period a timestamp falls in, as sortable text ('2026-12-03', '2026-12-03 14', the
    Monday of a week), computed by the database."""
    if engine.dialect.name == "sqlite":
        if grain == "week":  # SQLite stores 'YYYY-MM-DD HH:MM:SS…' text
            return sa.func.date(column, "-6 days", "weekday 1")
        return sa.func.substr(column, 1, 13 if grain == "hour" else 10)
    utc = sa.func.timezone("UTC", column)
    if grain == "week":
        return sa.func.to_char(sa.func.date_trunc("week", utc), "YYYY-MM-DD")
    return sa.func.to_char(utc, "YYYY-MM-DD HH24" if grain == "hour" else "YYYY-MM-DD")


def grain_for(since: datetime | None) -> Grain:
    """The period charts per hour, day or week: a few dozen bars whatever the span up to now."""
    if since is None:
        return "week"
    days = (datetime.now(UTC) - since).total_seconds() / 86400
    return "hour" if days <= 3 else "day" if days <= 120 else "week"


class Store:
    """Read-only queries for the pages; every one fails as StoreUnavailable, never a traceback."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _rows(self, query: sa.Executable) -> list[sa.Row]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query))
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(_why(exc)) from None

    # ------------------------------------------------------------------ portfolio
    def overview(self, f: Filters) -> dict[str, Any]:
        p = predictions.c
        row = self._rows(sa.select(sa.func.count(), sa.func.avg(p.probability), sa.func.min(p.created_at),
                                   sa.func.max(p.created_at)).where(*f.where()))[0]  # fmt: skip
        return {"predictions": row[0], "mean_pd": row[1],
                "first": row[2] and as_utc(row[2]), "last": row[3] and as_utc(row[3])}  # fmt: skip

    def versions(self) -> list[str]:
        p = predictions.c
        return [r[0] for r in self._rows(sa.select(p.model_version).group_by(p.model_version))]

    def score_histogram(self, f: Filters) -> list[tuple[int, int]]:
        """(risk_score, predictions) for each score present."""
        p = predictions.c
        q = sa.select(p.risk_score, sa.func.count()).where(*f.where()).group_by(p.risk_score)
        return [(int(s), int(n)) for s, n in self._rows(q.order_by(p.risk_score))]

    def mix(
        self, f: Filters, column: Literal["risk_band", "decision"], grain: Grain
    ) -> list[tuple[str, str, int]]:
        """(period, band or decision, predictions)."""
        period = bucket(self.engine, predictions.c.created_at, grain).label("period")
        value = predictions.c[column]
        q = sa.select(period, value, sa.func.count()).where(*f.where()).group_by(period, value)
        return [(str(a), str(b), int(n)) for a, b, n in self._rows(q.order_by(period))]

    def labelled_scores(self, f: Filters, grain: Grain) -> list[tuple[str, int, int, int]]:
        """(period, risk_score, defaulted, predictions) over labelled predictions: what a
        realized AUC per period needs (metrics.auc_from_counts), counted in the database."""
        period = bucket(self.engine, predictions.c.created_at, grain).label("period")
        j = predictions.join(outcomes, outcomes.c.prediction_id == predictions.c.prediction_id)
        q = (sa.select(period, predictions.c.risk_score, outcomes.c.defaulted, sa.func.count())
             .select_from(j).where(*f.where())
             .group_by(period, predictions.c.risk_score, outcomes.c.defaulted))  # fmt: skip
        return [(str(a), int(s), int(d), int(n)) for a, s, d, n in self._rows(q)]

    def interventions_by_action(self, f: Filters, grain: Grain) -> list[tuple[str, str, int]]:
        """(period, action, interventions)."""
        period = bucket(self.engine, interventions.c.created_at, grain).label("period")
        q = (sa.select(period, interventions.c.action, sa.func.count())
             .where(*f.where(interventions)).group_by(period, interventions.c.action))  # fmt: skip
        return [(str(a), str(b), int(n)) for a, b, n in self._rows(q.order_by(period))]

    def monitoring_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        q = sa.select(monitoring_runs).order_by(monitoring_runs.c.id.desc()).limit(limit)
        return [dict(r._mapping) for r in self._rows(q)]

    # ------------------------------------------------------------------ customer
    def customer_predictions(self, customer_id: str) -> list[dict[str, Any]]:
        p = predictions.c
        q = (sa.select(p.prediction_id, p.created_at, p.model_version, p.probability, p.risk_score,
                       p.risk_band, p.decision, p.reasons, outcomes.c.defaulted)
             .select_from(predictions.outerjoin(outcomes, outcomes.c.prediction_id == p.prediction_id))
             .where(p.customer_id == customer_id)
             .order_by(p.created_at.desc()).limit(HISTORY_ROWS))  # fmt: skip
        return [{**r._mapping, "created_at": as_utc(r.created_at)} for r in self._rows(q)]

    def customer_outcomes(self, customer_id: str) -> list[dict[str, Any]]:
        q = (sa.select(outcomes).where(outcomes.c.customer_id == customer_id)
             .order_by(outcomes.c.received_at.desc()).limit(HISTORY_ROWS))  # fmt: skip
        return [dict(r._mapping) for r in self._rows(q)]

    def customer_interventions(self, customer_id: str) -> list[dict[str, Any]]:
        q = (sa.select(interventions).where(interventions.c.customer_id == customer_id)
             .order_by(interventions.c.id.desc()).limit(HISTORY_ROWS))  # fmt: skip
        return [dict(r._mapping) for r in self._rows(q)]

    # ------------------------------------------------------------------ service
    def rows_written(self) -> dict[str, Any]:
        p = predictions.c
        row = self._rows(sa.select(sa.func.count(), sa.func.max(p.created_at)))[0]
        n_out = self._rows(sa.select(sa.func.count()).select_from(outcomes))[0][0]
        return {
            "predictions": int(row[0]),
            "latest": row[1] and as_utc(row[1]),
            "outcomes": int(n_out),
        }


def _why(exc: sa.exc.SQLAlchemyError) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
    if "no such table" in text or "does not exist" in text:
        return "the prediction store holds no predictions yet (the service creates its tables at start)"
    if "unable to open database file" in text:
        return "the prediction store does not exist yet: start the service (`make serve`) and score something"
    return f"the prediction store cannot be read: {text}"
