"""Writes every prediction to the store without ever slowing down or failing a request.

`submit` only appends to an in-memory queue. One background thread drains it in batches with
INSERT … ON CONFLICT (prediction_id) DO NOTHING. While the store is unreachable, batches go to
spool files on local disk instead: `spool-<ns>-<pid>-<rand>.jsonl`, one JSON row per line,
fsynced and renamed into place, so a spool file is either complete or absent. The thread
retries the store every retry_interval_s; once it answers, it replays the spool files oldest
first and deletes each only after its rows are committed. Files left by an earlier process
are replayed at start. Because inserts are idempotent, a file replayed twice (a crash between
commit and delete, two workers sharing one spool directory) never duplicates a row.

Rows the database refuses as data (a NOT NULL or type violation) cannot be fixed by retrying;
they are appended to `rejected.jsonl` in the spool directory for a person to look at.

A prediction that triggered an intervention carries it (`intervention`: the action): the
intervention is recorded in the same transaction as the prediction, spooled and replayed with
it, once, with the per-customer cooldown applied by the store (serving/interventions.py)."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from riskloop.stores import redact
from serving.logbatch import PredictionColumns
from serving.store import (
    insert_interventions,
    insert_predictions,
    insert_sqlite_columns,
    insert_sqlite_values,
    intervention_of,
    make_engine,
    now_utc,
    prediction_row,
    sqlite_prediction_values,
    to_jsonable,
)

log = logging.getLogger(__name__)

EngineSource = str | sa.Engine | Callable[[], sa.Engine]
REJECTED = "rejected.jsonl"
_STOP = object()  # queued by close(): everything submitted before it is still written
# Errors about the rows themselves; anything else means the store is unavailable.
_BAD_DATA = (sa.exc.IntegrityError, sa.exc.DataError)
Item = dict[str, Any] | PredictionColumns  # what a batch holds: clean rows and column blocks


def _n_rows(items: Sequence[Item]) -> int:
    return sum(len(i) if isinstance(i, PredictionColumns) else 1 for i in items)


def _flatten(items: Sequence[Item]) -> list[dict[str, Any]]:
    """Clean dict rows of a batch: column blocks expanded (spool files, PostgreSQL, retries)."""
    if not any(isinstance(i, PredictionColumns) for i in items):
        return list(items)  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    for item in items:
        out.extend(item.rows() if isinstance(item, PredictionColumns) else [item])
    return out


def write_spool_file(spool_dir: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write rows (JSON-safe dicts) as one durable spool file and return its path."""
    name = f"spool-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = spool_dir / f".{name}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        fh.flush()
        os.fsync(fh.fileno())
    path = spool_dir / name
    os.replace(tmp, path)  # readers only ever see whole files
    _fsync_dir(spool_dir)  # ...and the rename itself survives a power cut
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_spool_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, unparseable lines); raises FileNotFoundError if another worker replayed it."""
    rows, corrupt = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            corrupt.append(line)
    return rows, corrupt


def _summary(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


class PredictionLogWriter:
    def __init__(
        self,
        engine: EngineSource,
        spool_dir: Path,
        batch_size: int = 500,
        flush_interval_s: float = 0.05,
        retry_interval_s: float = 1.0,
        cooldown_s: float = 0.0,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        if isinstance(engine, str):
            self._engine = make_engine(engine)
        else:
            self._engine = engine if isinstance(engine, sa.Engine) else engine()
        self._name = redact(self._engine.url.render_as_string(hide_password=False))
        self._spool_dir = Path(spool_dir)
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._cooldown_s = cooldown_s  # between two interventions of one customer
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()  # orders submit() against close()
        self._count_lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("rows_written", "rows_spooled", "rows_replayed", "rows_rejected", "rows_dropped"), 0
        )
        self._queued = 0  # rows waiting in the queue (an item may hold many)
        self._closed = False
        self._store_up = False
        self._warned = False
        self._next_retry = 0.0
        self._inflight: list[Item] = []
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, row: dict[str, Any]) -> None:
        """Queue one prediction row; never blocks on the store and never raises."""
        if not self._enqueue(row, 1):
            self._spool([self._clean(row)])  # after close(): straight to disk, still not lost

    def submit_columns(self, cols: PredictionColumns) -> None:
        """Queue a block of rows as columns (the service's batches): written with multi-row
        statements, never a dict per row unless spooled or sent to PostgreSQL."""
        if len(cols) and not self._enqueue(cols, len(cols)):
            self._spool([cols])

    def _enqueue(self, item: Any, rows: int) -> bool:
        """Queue an item of `rows` rows; False once close() was called (the caller spools)."""
        with self._submit_lock:
            if self._closed:
                return False
            self._queue.put(item)
            with self._count_lock:
                self._queued += rows
            return True

    def stats(self) -> dict[str, Any]:
        """Row counters since start: written (live batches committed, resent duplicates
        included), spooled, replayed (from spool files), rejected (invalid rows, kept in
        rejected.jsonl) and dropped (only when the spool disk itself fails)."""
        with self._count_lock:
            counts = dict(self._counts)
            queued = self._queued
        return {"queue_depth": queued, **counts, "store_up": self._store_up}

    def close(self, timeout_s: float = 10.0) -> None:
        """Write out everything submitted so far (to the store, or to the spool if it is down)."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            # The store hangs. Keep what is still in memory on disk; if the in-flight batch
            # also lands in the store, the idempotent replay makes that harmless.
            log.error("prediction log writer still busy after %.0f s; spooling the rest", timeout_s)
            leftover: list[Item] = list(self._inflight)
            while not self._queue.empty():
                item = self._queue.get()
                if item is not _STOP:
                    leftover.append(self._dequeued(item))
            self._spool(leftover)
            self._queue.put(_STOP)  # so the thread still stops once the store answers
        elif self._owns_engine:
            self._engine.dispose()

    def _run(self) -> None:
        self._recover()  # leftovers of an earlier process first
        stopping = False
        while not stopping:
            # While the store is down, gather longer: fewer, larger spool files.
            linger = self._flush_interval_s if self._store_up else self._retry_interval_s
            batch, stopping = self._take_batch(linger)
            if batch:
                self._write(batch)
            if not self._store_up and not stopping and time.monotonic() >= self._next_retry:
                self._recover()

    def _take_batch(self, linger_s: float) -> tuple[list[Item], bool]:
        """About batch_size clean rows (a multi-row item is taken whole) arriving within
        linger_s; True once close() was called."""
        batch: list[Item] = []
        rows = 0
        deadline = time.monotonic() + linger_s
        while rows < self._batch_size:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            taken = self._dequeued(item)
            batch.append(taken)
            rows += _n_rows([taken])
        return batch, False

    def _dequeued(self, item: Any) -> Item:
        """One queued item, taken off the count: a row (submit), cleaned, or a column block
        (submit_columns), whole."""
        with self._count_lock:
            self._queued -= _n_rows([item])
        return item if isinstance(item, PredictionColumns) else self._clean(item)

    def _write(self, batch: list[Item]) -> None:
        rows = self._inflight = batch
        try:
            if self._store_up:
                try:
                    self._commit(rows)
                    self._count("rows_written", _n_rows(rows))
                    return
                except Exception as exc:  # any failure: the rows are still ours to keep
                    self._mark_down(exc)
            self._spool(rows)
        finally:
            self._inflight = []

    def _recover(self) -> None:
        """The store counts as up again only once every spool file is back in it."""
        try:
            with self._engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            for path in sorted(self._spool_dir.glob("spool-*.jsonl")):
                self._replay(path)
        except Exception as exc:
            self._mark_down(exc)
            return
        if not self._store_up:
            log.info("prediction store %s is up; spool replayed", self._name)
        self._store_up = True

    def _replay(self, path: Path) -> None:
        try:
            rows, corrupt = _read_spool_file(path)
        except FileNotFoundError:
            return  # another worker sharing this spool directory replayed it
        for start in range(0, len(rows), self._batch_size):
            self._commit(rows[start : start + self._batch_size])
        self._reject([{"raw": line} for line in corrupt])
        path.unlink(missing_ok=True)
        _fsync_dir(self._spool_dir)
        self._count("rows_replayed", len(rows))

    def _commit(self, items: list[Item]) -> None:
        """Insert rows in one transaction. Rows that are invalid, or that the database refuses
        as data, are rejected one by one; any other failure propagates, nothing committed."""
        prepared, bad = [], []
        fast = self._engine.dialect.name == "sqlite"  # positional bulk insert, JSON as text
        blocks = [i for i in items if isinstance(i, PredictionColumns)] if fast else []
        rows = (
            [i for i in items if not isinstance(i, PredictionColumns)] if fast else _flatten(items)
        )
        ts_cache: dict[Any, str] = {}
        for row in rows:
            try:
                values = (
                    sqlite_prediction_values(row, ts_cache)
                    if fast
                    else prediction_row(row, json_safe=True)
                )
                prepared.append((row, values))
            except (KeyError, TypeError, ValueError):
                bad.append(row)
        triggered = [i for raw, _ in prepared if (i := intervention_of(raw))]
        triggered += [i for block in blocks for i in block.intervention_rows()]
        try:
            with self._engine.begin() as conn:
                insert = insert_sqlite_values if fast else insert_predictions
                insert(conn, [values for _, values in prepared])
                for block in blocks:
                    insert_sqlite_columns(conn, block)
                if triggered:
                    insert_interventions(conn, triggered, self._cooldown_s)
        except _BAD_DATA:
            if len(prepared) == 1 and not blocks:
                bad.append(prepared[0][0])
            else:  # find the culprits; the idempotent insert makes re-sending the rest safe
                for raw in [*(raw for raw, _ in prepared), *_flatten(blocks)]:
                    self._commit([raw])
        # Only now: had the store failed, these rows would be spooled with the rest.
        self._reject(bad)

    def _spool(self, items: list[Item]) -> None:
        if not items:
            return
        rows = _flatten(items)
        try:
            write_spool_file(self._spool_dir, rows)
            self._count("rows_spooled", len(rows))
        except Exception:
            log.exception("could not spool %d prediction rows to %s", len(rows), self._spool_dir)
            self._count("rows_dropped", len(rows))

    def _reject(self, rows: list[Any]) -> None:
        if not rows:
            return
        log.error("%d invalid prediction rows kept in %s", len(rows), self._spool_dir / REJECTED)
        try:
            with (self._spool_dir / REJECTED).open("a", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"row": row}) + "\n" for row in rows)
                fh.flush()
                os.fsync(fh.fileno())
            self._count("rows_rejected", len(rows))
        except Exception:
            log.exception("could not keep %d rejected prediction rows", len(rows))
            self._count("rows_dropped", len(rows))

    @staticmethod
    def _clean(row: Any) -> dict[str, Any]:
        """JSON-safe and timestamped now, so the spool and the store get identical rows."""
        try:
            clean = to_jsonable(row) if isinstance(row, Mapping) else {"raw": to_jsonable(row)}
        except Exception:  # e.g. a self-referencing dict: keep a trace, the row gets rejected
            clean = {"raw": repr(row)}
        clean.setdefault("created_at", now_utc().isoformat())
        return clean

    def _mark_down(self, exc: BaseException) -> None:
        self._next_retry = time.monotonic() + self._retry_interval_s
        if self._store_up or not self._warned:  # once per outage, not once per retry
            self._warned = True
            msg = "prediction store %s unavailable (%s); spooling to %s"
            log.warning(msg, self._name, _summary(exc), self._spool_dir)
        self._store_up = False

    def _count(self, key: str, n: int) -> None:
        with self._count_lock:
            self._counts[key] += n
