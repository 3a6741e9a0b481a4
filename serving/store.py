"""The scoring service's prediction store: predictions, outcome labels, interventions and the
online feature table; beside them the monitoring job's decisions, job locks and schedule.
SQLAlchemy Core tables and one thin adapter; the schema evolves only through the Alembic
migrations in serving/migrations (`upgrade`), never through create_all.

SQLite (embedded default) and PostgreSQL (production) are both first-class: every write that
must be idempotent uses the dialect's own INSERT … ON CONFLICT."""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from riskloop.errors import SettingsError
from riskloop.stores import normalize_db_url
from serving.logbatch import PredictionColumns
from serving.schemas import MAX_NOTE_LENGTH

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# MLflow keeps its own Alembic history in `alembic_version`; ours must not collide with it when
# both live in one PostgreSQL database.
VERSION_TABLE = "serving_alembic_version"
PG_CONNECT_TIMEOUT_S = 3
# Kernel-level limit on unacknowledged writes: a live connection into a network black hole
# fails in seconds instead of after the ~15 min TCP retransmission timeout.
PG_TCP_USER_TIMEOUT_MS = 10_000
# Server-side bounds on every statement and lock wait: a slow or locked store fails the call
# (the log writer keeps the rows in its journal) instead of holding a worker thread.
PG_STATEMENT_TIMEOUT_MS = 5_000
PG_LOCK_TIMEOUT_MS = 2_000
SQLITE_BUSY_TIMEOUT_MS = 5_000
# First key of PostgreSQL's two-key advisory locks, so ours never meet another tool's.
_PG_LOCK_NS = 0x7269736B  # "risk"
_CHUNK = 500

TS = sa.DateTime(timezone=True)
metadata = sa.MetaData()
# Where an intervention comes from (interventions.source)
POLICY, MANUAL = "policy", "manual"


# An answered prediction the store may not hold yet: (prediction_id, customer_id, created_at)
Candidate = tuple[str, str | None, str]
Unflushed = Callable[[set[str], set[str]], list[Candidate]]


def _id_column() -> sa.Column:
    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER PRIMARY KEY.
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("prediction_id", sa.String(32), primary_key=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("request_id", sa.String(64)),
    sa.Column("model_name", sa.String(255), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("risk_score", sa.Integer, nullable=False),
    sa.Column("risk_band", sa.String(32), nullable=False),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("reasons", sa.JSON(none_as_null=True)),
    # The window order (newest first, ties by id) read off the index alone: a batch logs
    # millions of rows under one created_at, which a created_at index leaves to a sort
    # (migration 0007).
    sa.Index("ix_predictions_created_id", "created_at", "prediction_id"),
    # Serves "latest prediction of a customer" (outcomes by customer) and per-customer lookups.
    # Only rows with a customer: anonymous applicant rows (most of a batch) skip this index.
    sa.Index("ix_predictions_customer_created", "customer_id", "created_at",
             sqlite_where=sa.text("customer_id IS NOT NULL"),
             postgresql_where=sa.text("customer_id IS NOT NULL")),
)  # fmt: skip

outcomes = sa.Table(
    "outcomes",
    metadata,
    # No foreign key: predictions may be archived or partitioned independently of labels.
    sa.Column("prediction_id", sa.String(32), primary_key=True),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("defaulted", sa.Integer, nullable=False),
    sa.Column("observed_at", TS, nullable=False),
    sa.Column("received_at", TS, nullable=False),
    sa.CheckConstraint("defaulted IN (0, 1)", name="ck_outcomes_defaulted_binary"),
)

interventions = sa.Table(
    "interventions",
    metadata,
    _id_column(),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("prediction_id", sa.String(32)),
    sa.Column("risk_score", sa.Integer),
    sa.Column("risk_band", sa.String(32)),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    # policy: triggered by a prediction (the log writer); manual: a person's decision, recorded
    # with POST /interventions (migration 0006: every earlier row is a policy one)
    sa.Column("source", sa.String(16), nullable=False, server_default=POLICY),
    sa.Column("note", sa.String(MAX_NOTE_LENGTH)),
    sa.CheckConstraint(f"source IN ('{POLICY}', '{MANUAL}')", name="ck_interventions_source"),
    sa.Index("ix_interventions_customer_created", "customer_id", "created_at"),
    # one per prediction: the log writer's replays never record one twice (migration 0004)
    sa.Index("ux_interventions_prediction", "prediction_id", unique=True),
)

online_features = sa.Table(
    "online_features",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("record", sa.JSON, nullable=False),  # the raw model-input record
    sa.Column("as_of", TS, nullable=False),
    sa.Column("data_version", sa.String(64), nullable=False),
)

# One row per monitoring run: the decision (retrain or not), why, and what was done about it.
monitoring_runs = sa.Table(
    "monitoring_runs",
    metadata,
    _id_column(),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),  # retrain | no_retrain | ...
    sa.Column("retrain", sa.Boolean, nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("model_version", sa.String(64)),
    sa.Column("window_start", TS),
    sa.Column("window_end", TS),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("labelled_rows", sa.Integer, nullable=False),
    sa.Column("report", sa.String(1024)),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("acted_at", TS),  # when the retrain it decided ran
    sa.Column("action", sa.JSON(none_as_null=True)),  # what the retrain produced
    sa.Index("ix_monitoring_runs_created_at", "created_at"),
)

# A lease per job name (monitoring.lock): one run at a time across processes and machines.
job_locks = sa.Table(
    "job_locks",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("acquired_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),  # free to take over after this
)

SCHEDULED_STATUSES = ("running", "ok", "failed", "missed", "locked")
_STATUS_IN = ", ".join(f"'{s}'" for s in SCHEDULED_STATUSES)
# One row per due time of a scheduled job (`riskloop schedule`) and what became of it. The
# unique (job, due_at) makes a due time's fate single: two schedulers never both run it.
scheduled_runs = sa.Table(
    "scheduled_runs",
    metadata,
    _id_column(),
    sa.Column("job", sa.String(64), nullable=False),
    sa.Column("due_at", TS, nullable=False),
    sa.Column("started_at", TS),
    sa.Column("finished_at", TS),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("exit_code", sa.Integer),
    sa.Column("detail", sa.String(1024)),
    sa.CheckConstraint(f"status IN ({_STATUS_IN})", name="ck_scheduled_runs_status"),
    sa.Index("ux_scheduled_runs_job_due", "job", "due_at", unique=True),
)

_PREDICTION_COLUMNS = tuple(c.name for c in predictions.columns)


# --- pure helpers -------------------------------------------------------------------------


def now_utc() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime or ISO string; naive means UTC. SQLite stores the
    wall-clock digits only, so everything must be UTC before it is written or compared."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime or ISO string, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy: datetimes as ISO strings, numpy values as Python ones, NaN/inf as null
    (PostgreSQL's json type rejects NaN), anything else unknown as its str()."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return to_jsonable(value.tolist())
    return str(value)


def prediction_row(raw: Mapping[str, Any], json_safe: bool = False) -> dict[str, Any]:
    """One predictions row from what the service submits (or a spool file holds): every column
    present (an executemany needs uniform keys), unknown keys left out, and types coerced so
    SQLite and PostgreSQL store the same thing. Raises KeyError/TypeError/ValueError for a row
    no retry can fix. `json_safe`: `inputs` and `reasons` are already JSON-safe (the log
    writer cleans every row before it gets here), so they are not copied again."""
    row = {name: raw.get(name) for name in _PREDICTION_COLUMNS}
    if not row["prediction_id"]:
        raise KeyError("prediction_id")
    row["created_at"] = as_utc(raw["created_at"])
    row["probability"] = float(raw["probability"])
    row["risk_score"] = int(raw["risk_score"])
    if not json_safe:
        row["inputs"] = to_jsonable(raw["inputs"])
        row["reasons"] = to_jsonable(row["reasons"])
    return row


_SQLITE_INSERT = (
    f"INSERT INTO predictions ({', '.join(_PREDICTION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_PREDICTION_COLUMNS))}) ON CONFLICT (prediction_id) DO NOTHING"
)
# SQLAlchemy's own SQLite DATETIME storage format, so both insert paths store the same text
_SQLITE_TS = predictions.c.created_at.type.dialect_impl(sqlite.dialect()).bind_processor(
    sqlite.dialect()
)


def sqlite_prediction_values(raw: Mapping[str, Any], ts_cache: dict[Any, str]) -> tuple:
    """`prediction_row` for SQLite's bulk path as one positional tuple, JSON columns already
    text: the same coercions and the same errors, ~5x less work per row than SQLAlchemy's
    executemany (which compiles parameters row by row). `ts_cache`: created_at -> stored text
    (the rows of a batch share a timestamp)."""
    pid = raw.get("prediction_id")
    if not pid:
        raise KeyError("prediction_id")
    created = raw["created_at"]
    ts = ts_cache.get(created) if isinstance(created, str) else None
    if ts is None:
        ts = _SQLITE_TS(as_utc(created))
        if isinstance(created, str):
            ts_cache[created] = ts
    reasons = raw.get("reasons")
    return (pid, ts, raw.get("request_id"), raw.get("model_name"), raw.get("model_version"),
            raw.get("customer_id"), _json_text(raw["inputs"]), float(raw["probability"]),
            int(raw["risk_score"]), raw.get("risk_band"), raw.get("decision"),
            None if reasons is None else _json_text(reasons))  # fmt: skip


_STATEMENT_ROWS = 100  # rows per multi-row INSERT


@functools.cache
def _sqlite_columns_sql(n_rows: int, shared: tuple[str, ...]) -> str:
    """A multi-row INSERT in which each column of `shared` is one parameter for every row
    (?1, ?2, ... in `shared`'s order) and every other column one parameter per row."""
    slot = {name: f"?{i + 1}" for i, name in enumerate(shared)}
    own = [c for c in _PREDICTION_COLUMNS if c not in slot]
    rows, at = [], len(shared) + 1
    for _ in range(n_rows):
        cells = {**slot, **{c: f"?{at + i}" for i, c in enumerate(own)}}
        rows.append("(" + ",".join(cells[c] for c in _PREDICTION_COLUMNS) + ")")
        at += len(own)
    return (f"INSERT INTO predictions ({', '.join(_PREDICTION_COLUMNS)}) VALUES {','.join(rows)} "
            "ON CONFLICT (prediction_id) DO NOTHING")  # fmt: skip


def insert_sqlite_columns(conn: sa.Connection, cols: PredictionColumns) -> None:
    """INSERT … ON CONFLICT (prediction_id) DO NOTHING of columnar rows, 100 rows a statement.
    A column whose value is the same in every row (the batch's timestamp and model, usually
    its request id, customer and reasons) is bound once: SQLite's cost here is dominated by
    binding parameters from Python (10k rows: ~110 -> ~75 ms with these and the multi-row
    statements)."""
    n = len(cols)
    if not n:
        return
    ts = _SQLITE_TS(as_utc(cols.created_at))
    per_row = {"request_id": cols.request_id, "customer_id": cols.customer_id, "inputs": cols.inputs,
               "probability": cols.probability, "risk_score": cols.risk_score, "risk_band": cols.risk_band,
               "decision": cols.decision, "reasons": cols.reasons}  # fmt: skip
    fixed = {"created_at": ts, "model_name": cols.model_name, "model_version": cols.model_version}
    fixed.update({c: v[0] for c, v in per_row.items() if v.count(v[0]) == n})
    shared = tuple(c for c in _PREDICTION_COLUMNS if c in fixed)
    columns = [cols.prediction_id if c == "prediction_id" else per_row[c]
               for c in _PREDICTION_COLUMNS if c not in fixed]  # fmt: skip
    head = [fixed[c] for c in shared]
    flat = list(itertools.chain.from_iterable(zip(*columns, strict=True)))
    width = len(columns)
    for start in range(0, n, _STATEMENT_ROWS):
        rows = min(_STATEMENT_ROWS, n - start)
        params = head + flat[start * width : (start + rows) * width]
        conn.exec_driver_sql(_sqlite_columns_sql(rows, shared), tuple(params))


def insert_sqlite_values(conn: sa.Connection, values: Sequence[tuple]) -> None:
    """INSERT … ON CONFLICT (prediction_id) DO NOTHING of `sqlite_prediction_values` tuples."""
    if values:
        conn.exec_driver_sql(_SQLITE_INSERT, list(values))


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _aware(row: Mapping[str, Any]) -> dict[str, Any]:
    """A result row as a dict, with SQLite's naive timestamps read back as the UTC they are."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row.items()}


# --- engine and migrations ----------------------------------------------------------------


def _json_text(value: Any) -> str:
    """JSON columns through orjson (~10x faster than json.dumps on a prediction's inputs);
    json.dumps for what orjson refuses (e.g. non-string keys), so nothing new fails."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def make_engine(url: str, pre_ping: bool = True) -> sa.Engine:
    """An engine for the prediction store (SQLite or PostgreSQL) tuned to fail fast."""
    parsed = sa.make_url(normalize_db_url(url, "DATABASE_URL"))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend != "postgresql":
        raise SettingsError(
            f"DATABASE_URL: the prediction store needs SQLite or PostgreSQL, not {backend}"
        )
    args = {"connect_timeout": PG_CONNECT_TIMEOUT_S, "tcp_user_timeout": PG_TCP_USER_TIMEOUT_MS,
            "options": f"-c statement_timeout={PG_STATEMENT_TIMEOUT_MS} -c lock_timeout={PG_LOCK_TIMEOUT_MS}",
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}  # fmt: skip
    return sa.create_engine(
        parsed, pool_pre_ping=pre_ping, connect_args=args, json_serializer=_json_text
    )


def interrupt(dbapi_conn: Any) -> None:
    """Break a PostgreSQL connection whose server stopped answering (a stalled network path
    acknowledges packets, so neither TCP timeouts nor statement_timeout fire): the blocked
    call then fails at once and the caller treats the store as down. SQLite needs none: its
    waits are bounded by busy_timeout."""
    fileno = getattr(dbapi_conn, "fileno", None)
    if fileno is None or isinstance(dbapi_conn, sqlite3.Connection):
        return
    try:
        sock = socket.socket(fileno=os.dup(fileno()))
    except Exception:  # closed meanwhile: nothing left to break
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, json_serializer=_json_text)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets the API read while the log writer writes; busy_timeout makes a writer wait
        # for the lock instead of failing at once.
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crash of the process
        # loses nothing committed, only a power cut can take back the last commits. FULL made
        # each of the log writer's commits wait for the disk. (PostgreSQL is the production
        # store.) A 64 MB page cache keeps the hot index pages of a large log in memory.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    return engine


def restrict_files(url: str) -> None:
    """An SQLite store holds personal data: owner-only files (PostgreSQL has its own grants)."""
    parsed = sa.make_url(normalize_db_url(url, "DATABASE_URL"))
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return
    for suffix in ("", "-wal", "-shm"):
        path = Path(parsed.database + suffix).expanduser()
        if path.exists():
            path.chmod(0o600)


def upgrade(url: str | sa.Engine, revision: str = "head") -> None:
    """Bring the store's schema to `revision` with the Alembic migrations (from any cwd)."""
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url) if isinstance(url, str) else url
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Service workers start together: they migrate one at a time (PostgreSQL DDL is
                # transactional, so the second one finds the schema at head and does nothing).
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_NS, 0)))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        if isinstance(url, str):
            engine.dispose()


def dialect_insert(conn: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which has on_conflict_do_nothing / on_conflict_do_update."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise SettingsError(f"the prediction store needs SQLite or PostgreSQL, not {conn.dialect.name}")


def insert_predictions(conn: sa.Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT … ON CONFLICT (prediction_id) DO NOTHING, so replaying a batch never duplicates.
    Rows as made by `prediction_row`."""
    if rows:
        stmt = dialect_insert(conn, predictions).on_conflict_do_nothing(
            index_elements=["prediction_id"]
        )
        conn.execute(stmt, list(rows))


def insert_columns(conn: sa.Connection, cols: PredictionColumns) -> None:
    """A block of prediction-log rows, the dialect's fastest way (ON CONFLICT DO NOTHING)."""
    if conn.dialect.name == "sqlite":
        insert_sqlite_columns(conn, cols)
    else:
        insert_predictions(conn, [prediction_row(r, json_safe=True) for r in cols.rows()])


def intervention_of(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The intervention a logged prediction row triggered (its `intervention` action), if any."""
    action = row.get("intervention")
    if not action:
        return None
    return {"customer_id": row.get("customer_id"), "prediction_id": row.get("prediction_id"),
            "risk_score": row.get("risk_score"), "risk_band": row.get("risk_band"), "action": action,
            "created_at": row["created_at"]}  # fmt: skip


def insert_interventions(conn: sa.Connection, rows: Sequence[Mapping[str, Any]],
                         cooldown_s: float) -> int:  # fmt: skip
    """Record interventions ({customer_id, prediction_id, risk_score, risk_band, action,
    created_at}); returns how many were new. At most one per prediction (a replay records
    nothing twice), and none within cooldown_s of another intervention of the same customer,
    before or after it: exact whatever order workers and spool replays write in. Check and
    insert are one INSERT … SELECT … WHERE NOT EXISTS, which SQLite runs under its write lock;
    on PostgreSQL a per-customer advisory lock keeps two transactions from both passing it."""
    if cooldown_s < 0:
        raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
    window = timedelta(seconds=cooldown_s)
    added = 0
    for row in rows:
        at, customer = as_utc(row["created_at"]), str(row["customer_id"])
        clash = sa.select(interventions.c.id).where(
            interventions.c.customer_id == customer,
            interventions.c.created_at > at - window,
            interventions.c.created_at < at + window,
        )
        values = {
            "customer_id": (customer, sa.String()),
            "prediction_id": (row.get("prediction_id"), sa.String()),
            "risk_score": (row.get("risk_score"), sa.Integer()),
            "risk_band": (row.get("risk_band"), sa.String()),
            "action": (row["action"], sa.String()),
            "created_at": (at, TS),
            "source": (POLICY, sa.String()),
        }
        select = sa.select(*(sa.literal(v, t) for v, t in values.values())).where(~sa.exists(clash))
        stmt = dialect_insert(conn, interventions).from_select(list(values), select)
        if row.get("prediction_id") is not None:
            stmt = stmt.on_conflict_do_nothing(index_elements=["prediction_id"])
        _lock_customer(conn, customer)
        added += conn.execute(stmt).rowcount
    return added


def _lock_customer(conn: sa.Connection, customer: str) -> None:
    """On PostgreSQL, one writer of a customer's interventions at a time (until the
    transaction ends); SQLite's write lock already serializes them."""
    if conn.dialect.name == "postgresql":
        key = sa.func.hashtext(sa.literal(customer, sa.String()))
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_NS, key)))


def _newest_first(customer_id: str, *columns: sa.ColumnElement) -> sa.Select:
    """A customer's predictions, newest first (a tie: the larger id), on the customer index."""
    return (
        sa.select(*columns)
        .where(predictions.c.customer_id == customer_id)
        .order_by(predictions.c.created_at.desc(), predictions.c.prediction_id.desc())
    )


# --- adapter ------------------------------------------------------------------------------


class PredictionStore:
    """Reads and idempotent writes the service and the monitoring jobs need."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def count_predictions(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()

    def record_outcomes(
        self, items: Sequence[Mapping[str, Any]], unflushed: Unflushed | None = None
    ) -> list[dict[str, Any]]:
        """Label predictions, one result per item, in order. Status: recorded | duplicate (the
        same label again: nothing changes) | conflict (another label exists; it is kept) |
        unknown_prediction | unknown_customer | invalid. A customer_id resolves to that
        customer's newest prediction answered before the outcome arrived.

        `unflushed(prediction_ids, customer_ids)` names answered predictions that may not be
        in the store yet (the log writer's journal): asked before the store, so a row that
        leaves the journal meanwhile is in the store by the time the store is read."""
        received_at = now_utc()
        pending = unflushed(
            {i["prediction_id"] for i in items if i.get("prediction_id")},
            {i["customer_id"] for i in items if i.get("customer_id")},
        ) if unflushed else []  # fmt: skip
        with self.engine.begin() as conn:
            return [self._record_outcome(conn, item, received_at, pending) for item in items]

    def _record_outcome(self, conn: sa.Connection, item: Mapping[str, Any], received_at: datetime,
                        pending: list[Candidate]) -> dict[str, Any]:  # fmt: skip
        pid, cid = item.get("prediction_id"), item.get("customer_id")
        defaulted = item.get("defaulted")
        result: dict[str, Any] = {"prediction_id": pid, "customer_id": cid, "defaulted": defaulted}
        try:
            observed_at = as_utc(item["observed_at"]) if item.get("observed_at") else received_at
        except (TypeError, ValueError) as exc:
            return {**result, "status": "invalid", "error": f"observed_at: {exc}"}
        if isinstance(defaulted, float) or defaulted not in (0, 1):
            return {**result, "status": "invalid", "error": "defaulted must be 0 or 1"}
        if not pid and not cid:
            return {**result, "status": "invalid", "error": "need prediction_id or customer_id"}
        target = self._resolve(conn, pid, cid, received_at, pending)
        if target is None:
            return {**result, "status": "unknown_prediction" if pid else "unknown_customer"}
        result.update(prediction_id=target[0], customer_id=target[1])
        values = {
            **result,
            "defaulted": int(defaulted),
            "observed_at": observed_at,
            "received_at": received_at,
        }
        stmt = (
            dialect_insert(conn, outcomes)
            .values(values)
            .on_conflict_do_nothing(index_elements=["prediction_id"])
        )
        if conn.execute(stmt).rowcount == 1:
            return {**result, "status": "recorded"}
        existing = conn.execute(
            sa.select(outcomes.c.defaulted).where(outcomes.c.prediction_id == target[0])
        ).scalar_one()
        if existing == int(defaulted):
            return {**result, "status": "duplicate"}
        return {**result, "status": "conflict", "existing_defaulted": existing}

    @staticmethod
    def _resolve(conn: sa.Connection, pid: str | None, cid: str | None, received_at: datetime,
                 pending: list[Candidate]) -> tuple[str, str | None] | None:  # fmt: skip
        """(prediction_id, customer_id) an outcome labels, from the store or the journal."""
        cols = (predictions.c.prediction_id, predictions.c.customer_id, predictions.c.created_at)
        if pid:
            row = conn.execute(
                sa.select(*cols[:2]).where(predictions.c.prediction_id == pid)
            ).first()
            if row is not None:
                return row.prediction_id, row.customer_id
            return next(((p, c) for p, c, _ in pending if p == pid), None)
        latest = _newest_first(cid, *cols).where(predictions.c.created_at <= received_at)
        found = [(as_utc(r.created_at), r.prediction_id) for r in conn.execute(latest.limit(1))]
        found += [(as_utc(t), p) for p, c, t in pending if c == cid and as_utc(t) <= received_at]
        return (max(found)[1], cid) if found else None

    def record_intervention(
        self,
        customer_id: str,
        prediction_id: str | None,
        risk_score: int | None,
        risk_band: str | None,
        action: str,
        cooldown_s: float,
    ) -> bool:
        """Record an intervention now unless the customer had one within cooldown_s; True if
        recorded (the log writer records triggered ones the same way)."""
        row = {"customer_id": customer_id, "prediction_id": prediction_id, "risk_score": risk_score,
               "risk_band": risk_band, "action": action, "created_at": now_utc()}  # fmt: skip
        with self.engine.begin() as conn:
            return insert_interventions(conn, [row], cooldown_s) == 1

    def record_manual_intervention(
        self, customer_id: str, action: str, note: str | None = None
    ) -> dict[str, Any]:
        """Record a person's decision now, whatever the cooldown (it is never refused): no
        prediction, the risk score and band of the customer's newest stored prediction (None
        when the store holds none). Returns the recorded row. It counts toward the cooldown of
        the interventions the policy triggers, as every recorded one does."""
        latest = _newest_first(customer_id, predictions.c.risk_score, predictions.c.risk_band)
        with self.engine.begin() as conn:
            _lock_customer(conn, customer_id)  # a policy insert's cooldown check sees this one
            found = conn.execute(latest.limit(1)).first()
            values = {"customer_id": customer_id, "prediction_id": None,
                      "risk_score": found.risk_score if found else None,
                      "risk_band": found.risk_band if found else None, "action": action,
                      "created_at": now_utc(), "source": MANUAL, "note": note}  # fmt: skip
            row = conn.execute(interventions.insert().values(values).returning(*interventions.c))
            return _aware(row.one()._mapping)

    def list_interventions(
        self, limit: int = 100, customer_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Newest first."""
        query = sa.select(interventions).order_by(interventions.c.id.desc()).limit(limit)
        if customer_id is not None:
            query = query.where(interventions.c.customer_id == customer_id)
        with self.engine.connect() as conn:
            return [_aware(row._mapping) for row in conn.execute(query)]

    def upsert_online_features(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Insert or update {customer_id, record, as_of, data_version} rows; returns how many
        distinct customers were sent. A row never replaces one with a later as_of, so a late
        backfill cannot roll the online table back; within one call the latest row wins."""
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            item = {
                "customer_id": str(row["customer_id"]),
                "record": to_jsonable(row["record"]),
                "as_of": as_utc(row["as_of"]),
                "data_version": str(row["data_version"]),
            }
            prev = latest.get(item["customer_id"])
            if prev is None or item["as_of"] >= prev["as_of"]:
                latest[item["customer_id"]] = item
        if not latest:
            return 0
        with self.engine.begin() as conn:
            stmt = dialect_insert(conn, online_features)
            stmt = stmt.on_conflict_do_update(
                index_elements=["customer_id"],
                set_={c: stmt.excluded[c] for c in ("record", "as_of", "data_version")},
                where=online_features.c.as_of <= stmt.excluded.as_of,
            )
            for chunk in _chunks(list(latest.values())):
                conn.execute(stmt, list(chunk))
        return len(latest)

    def get_online_features(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """{customer_id: {record, as_of, data_version}}; unknown ids are absent."""
        wanted = list(dict.fromkeys(str(i) for i in ids))
        found: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(wanted):
                query = sa.select(online_features).where(online_features.c.customer_id.in_(chunk))
                for row in conn.execute(query):
                    values = _aware(row._mapping)
                    found[values.pop("customer_id")] = values
        return found
