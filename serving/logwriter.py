"""Writes every prediction to the store without ever slowing a request down, and never
acknowledges one that is not durable.

`submit` / `submit_columns` first append the rows to the local journal (serving/journal.py),
fdatasync'd: the service answers a batch only after that returns, so kill -9 loses nothing
answered. Then they go on an in-memory queue; one background thread drains it in batches with
INSERT … ON CONFLICT (prediction_id) DO NOTHING and tells the journal which rows are in the
store, so committed segments are deleted. While the store is down, slow or stalled, rows stay
in the journal only (memory stays bounded); the thread retries the store every
retry_interval_s and, once it answers, replays every segment no live process appends to,
oldest first. Because inserts are idempotent, a row both committed live and replayed, or
replayed by two workers sharing one journal directory, is stored once.

When the journal itself cannot take a batch (disk full, I/O error), `submit*` raises
`LogUnavailable` and the service answers 503 instead of a prediction nobody could audit,
unless the operator chose `on_failure="drop"` (counted in `rows_dropped`).

Every store call is bounded: PostgreSQL's connect, statement and lock timeouts
(serving/store.py), SQLite's busy timeout, and a watchdog that breaks a connection whose call
has been stuck for stall_timeout_s (a network path that stalls acknowledges packets, so no
timeout on the server or in TCP fires).

Rows the store refuses for their content (a NOT NULL or type violation, a NUL character
PostgreSQL cannot hold) cannot be fixed by retrying: they go to the dead-letter file
`rejected.jsonl` with the reason, and never delay the rows behind them.

A prediction that triggered an intervention carries it (`intervention`: the action): the
intervention is recorded in the same transaction as the prediction, journaled and replayed
with it, once, with the per-customer cooldown applied by the store
(serving/interventions.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from riskloop.errors import ServiceUnavailable
from riskloop.stores import redact
from serving.journal import Journal, JournalError, segment_lines
from serving.logbatch import PredictionColumns
from serving.store import (
    Candidate,
    insert_interventions,
    insert_predictions,
    insert_sqlite_columns,
    insert_sqlite_values,
    interrupt,
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
ORPHAN_SCAN_S = 10.0  # how often a live writer looks for segments no live process holds
_STOP = object()  # queued by close(): everything submitted before it is still written
Item = dict[str, Any] | PredictionColumns  # what a batch holds: clean rows and column blocks


class LogUnavailable(ServiceUnavailable):
    """No durable place could take these prediction rows: do not answer them (503)."""


def _bad_data(exc: BaseException) -> bool:
    """An error about the rows themselves (retrying cannot help); anything else means the
    store is unavailable. psycopg2 raises a bare ValueError for a NUL character."""
    if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError | ValueError | TypeError):
        return True
    return isinstance(exc, sa.exc.StatementError) and not isinstance(exc, sa.exc.DBAPIError)


def _n_rows(items: Sequence[Item]) -> int:
    return sum(len(i) if isinstance(i, PredictionColumns) else 1 for i in items)


def _flatten(items: Sequence[Item]) -> list[dict[str, Any]]:
    """Clean dict rows of a batch: column blocks expanded (PostgreSQL, retries)."""
    if not any(isinstance(i, PredictionColumns) for i in items):
        return list(items)  # type: ignore[arg-type]
    out: list[dict[str, Any]] = []
    for item in items:
        out.extend(item.rows() if isinstance(item, PredictionColumns) else [item])
    return out


def _line(item: Item) -> bytes:
    if isinstance(item, PredictionColumns):
        return item.to_json() + b"\n"
    try:
        return orjson.dumps(item) + b"\n"
    except TypeError:  # e.g. a lone surrogate: escaped, so the store refuses it, not the journal
        return json.dumps(item).encode() + b"\n"


def _parse(line: bytes) -> Item:
    """A journal line back into what was submitted; ValueError if it is not one."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "columns" in obj and isinstance(obj["columns"], dict):
        return PredictionColumns.from_json(obj["columns"])
    return obj


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
        stall_timeout_s: float = 5.0,
        on_failure: Literal["refuse", "drop"] = "refuse",
        max_queued_rows: int = 200_000,
    ) -> None:
        self._owns_engine = isinstance(engine, str)
        if isinstance(engine, str):
            # no pre-ping: a ping on a stalled path would hang where the watchdog cannot see it
            self._engine = make_engine(engine, pre_ping=False)
        else:
            self._engine = engine if isinstance(engine, sa.Engine) else engine()
        self._name = redact(self._engine.url.render_as_string(hide_password=False))
        self._spool_dir = Path(spool_dir)
        self.journal = Journal(self._spool_dir)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._cooldown_s = cooldown_s  # between two interventions of one customer
        self._stall_timeout_s = stall_timeout_s
        self._on_failure = on_failure
        self._max_queued_rows = max_queued_rows
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()  # orders submit() against close()
        self._count_lock = threading.Lock()
        self._counts = dict.fromkeys(("rows_written", "rows_spooled", "rows_replayed",
                                      "rows_rejected", "rows_dropped", "journal_failures"), 0)  # fmt: skip
        self._queued = 0  # rows waiting in the queue (an item may hold many)
        self._closed = False
        self._store_up = False
        self._journal_ok = True
        self._failed_bytes = 0  # size of the last write the journal refused
        # segments to replay once the store is up: at start, whatever earlier processes left;
        # later, where this process let rows go from memory (store down or slow)
        self._replay_due = True
        self._own_rows_due = False
        self._warned = False
        self._next_retry = 0.0
        self._next_scan = time.monotonic() + ORPHAN_SCAN_S
        self._busy: tuple[float, Any] | None = None  # (since, DBAPI connection) of a store call
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        self._watchdog = threading.Thread(target=self._watch, name="prediction-log-watchdog",
                                          daemon=True)  # fmt: skip
        self._watchdog.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, row: dict[str, Any]) -> None:
        """Make one prediction row durable, then queue it for the store; never waits on the
        store. Raises LogUnavailable when no durable place can take it."""
        clean = self._clean(row)
        self._durable(_line(clean), clean, 1)

    def submit_columns(self, cols: PredictionColumns) -> None:
        """The same for a block of rows as columns (the service's batches): one journal line
        and one fdatasync for the whole block, multi-row statements for the store."""
        if len(cols):
            self._durable(cols.to_json() + b"\n", cols, len(cols))

    def _durable(self, line: bytes, item: Item, rows: int) -> None:
        try:
            seg: int | None = self.journal.append(line, rows)
            self._journal_ok = True
        except JournalError as exc:
            self._journal_ok = False
            self._failed_bytes = len(line)
            self._count("journal_failures", 1)
            if self._on_failure == "refuse":
                raise LogUnavailable(f"prediction log cannot take rows: {exc}") from exc
            log.error("prediction journal failed (%s); %d rows only in memory", exc, rows)
            self._count("rows_dropped", rows)  # at risk: lost if the process dies now
            seg = None
        with self._submit_lock:
            if self._closed or self._queued + rows > self._max_queued_rows:
                # the store is slower than traffic, or we are stopping: the journal holds them
                self._replay_due = self._own_rows_due = True
                self._count("rows_spooled", rows)
                return
            self._queue.put((seg, item))
            with self._count_lock:
                self._queued += rows

    def probe(self) -> bool:
        """Whether the journal can take rows again after a failure: room for several of the
        writes it refused, and an empty line fdatasync'd. Readiness asks this, so a node
        whose disk has room again comes back by itself."""
        if not self._journal_ok:
            try:
                if self.journal.free_bytes() < max(4 * self._failed_bytes, 64 * 1024):
                    return False
                self.journal.append(b"\n", 0)
                self._journal_ok = True
            except OSError:  # JournalError included
                pass
        return self._journal_ok

    def unflushed(self, prediction_ids: set[str], customer_ids: set[str]) -> list[Candidate]:
        """(prediction_id, customer_id, created_at) of journaled rows (of every worker sharing
        this directory) with one of these ids: answered, perhaps not in the store yet."""
        needles = [orjson.dumps(i) for i in (*prediction_ids, *customer_ids)]
        found: list[Candidate] = []
        if not needles:
            return found
        for path in self.journal.segments():
            try:
                lines, _ = segment_lines(path)
            except FileNotFoundError:
                continue  # settled and deleted meanwhile: its rows are in the store
            for line in lines:
                if not any(n in line for n in needles):
                    continue
                try:
                    item = _parse(line)
                except ValueError:
                    continue
                rows = item.rows() if isinstance(item, PredictionColumns) else [item]
                found += [(r["prediction_id"], r.get("customer_id"), r["created_at"]) for r in rows
                          if r.get("prediction_id") in prediction_ids
                          or r.get("customer_id") in customer_ids]  # fmt: skip
        return found

    # ------------------------------------------------------------------ state
    def stats(self) -> dict[str, Any]:
        """Row counters since start: written (live batches committed, resent duplicates
        included), spooled (left in the journal for a replay: store down, slow or stopping),
        replayed (from journal segments), rejected (dead-lettered in rejected.jsonl), dropped
        (unjournaled, only with on_failure="drop")."""
        with self._count_lock:
            counts = dict(self._counts)
            queued = self._queued
        return {"queue_depth": queued, **counts, "store_up": self.store_up,
                "journal_ok": self._journal_ok}  # fmt: skip

    @property
    def store_up(self) -> bool:
        busy = self._busy
        stalled = busy is not None and time.monotonic() - busy[0] > self._stall_timeout_s
        return self._store_up and not stalled

    @property
    def durable(self) -> bool:
        """Whether an answered prediction is safe now (the journal takes rows)."""
        return self._journal_ok

    def close(self, timeout_s: float = 10.0) -> None:
        """Write out what is queued, as far as the store allows within timeout_s; whatever is
        left stays in the journal for the next process. Later submits raise LogUnavailable."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("prediction store hangs; the journal keeps the rows not yet written")
        elif self._owns_engine:
            self._engine.dispose()
        self.journal.close()

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        self._recover()  # leftovers of an earlier process first
        stopping = False
        while not stopping:
            # While the store is down, gather longer: fewer, larger wake-ups.
            linger = self._flush_interval_s if self._store_up else self._retry_interval_s
            batch, stopping = self._take_batch(linger)
            if batch:
                self._write(batch)
            now = time.monotonic()
            if self._store_up and now >= self._next_scan:  # a dead worker's journal, say
                self._replay_due, self._next_scan = True, now + ORPHAN_SCAN_S
            due = not self._store_up or self._replay_due
            if due and not stopping and now >= self._next_retry:
                self._recover()

    def _take_batch(self, linger_s: float) -> tuple[list[tuple[int | None, Item]], bool]:
        """About batch_size rows (a block is taken whole) arriving within linger_s; True once
        close() was called."""
        batch: list[tuple[int | None, Item]] = []
        rows = 0
        deadline = time.monotonic() + linger_s
        while rows < self._batch_size:
            try:
                entry = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            n = _n_rows([entry[1]])
            with self._count_lock:
                self._queued -= n
            batch.append(entry)
            rows += n
        return batch, False

    def _write(self, batch: list[tuple[int | None, Item]]) -> None:
        items = [item for _, item in batch]
        if self._store_up:
            try:
                self._commit(items)
            except Exception as exc:  # the store failed: the rows are in the journal
                self._mark_down(exc)
            else:
                self._count("rows_written", _n_rows(items))
                for seg, item in batch:
                    if seg is not None:
                        self.journal.settle(seg, _n_rows([item]))
                return
        self._count("rows_spooled", _n_rows(items))
        self._replay_due = self._own_rows_due = True

    def _recover(self) -> None:
        """The store counts as up again only once every journal segment that no live
        process appends to is back in it (this process's open one too, rotated first, when
        it holds rows that were let go from memory)."""
        try:
            with self._engine.connect() as conn, self._watched(conn):
                conn.execute(sa.text("SELECT 1"))
            if self._replay_due:
                self._replay_due = False
                if self._own_rows_due:
                    self._own_rows_due = False
                    self.journal.rotate()
                for path in self.journal.replayable():
                    self._replay(path)
        except Exception as exc:
            self._replay_due = self._own_rows_due = True
            self._mark_down(exc)
            return
        if not self._store_up:
            log.info("prediction store %s is up; journal replayed", self._name)
        self._store_up = True

    def _replay(self, path: Path) -> None:
        try:
            lines, torn = segment_lines(path)
        except FileNotFoundError:
            return  # another worker sharing this directory replayed it
        if torn:
            log.warning("%s ends in a torn line (rows never acknowledged): skipped", path.name)
        items: list[Item] = []
        for line in lines:
            try:
                items.append(_parse(line))
            except ValueError as exc:
                self._reject(
                    [{"raw": line.decode("utf-8", "replace")}], f"unreadable journal line: {exc}"
                )
        chunk: list[Item] = []
        for item in items:
            chunk.append(item)
            if _n_rows(chunk) >= self._batch_size:
                self._commit(chunk)
                chunk = []
        if chunk:
            self._commit(chunk)
        self.journal.discard(path)
        self._count("rows_replayed", _n_rows(items))

    def _commit(self, items: list[Item]) -> None:
        """Insert rows in one transaction. Rows that are invalid, or that the store refuses
        as data, are dead-lettered one by one; any other failure propagates, nothing
        committed."""
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
            except (KeyError, TypeError, ValueError) as exc:
                bad.append((row, _summary(exc)))
        triggered = [i for raw, _ in prepared if (i := intervention_of(raw))]
        triggered += [i for block in blocks for i in block.intervention_rows()]
        try:
            with self._engine.begin() as conn, self._watched(conn):
                insert = insert_sqlite_values if fast else insert_predictions
                insert(conn, [values for _, values in prepared])
                for block in blocks:
                    insert_sqlite_columns(conn, block)
                if triggered:
                    insert_interventions(conn, triggered, self._cooldown_s)
        except Exception as exc:
            if not _bad_data(exc):
                raise
            if len(prepared) == 1 and not blocks:
                bad.append((prepared[0][0], _summary(exc)))
            else:  # find the culprits; the idempotent insert makes re-sending the rest safe
                for raw in [*(raw for raw, _ in prepared), *_flatten(blocks)]:
                    self._commit([raw])
        # Only now: had the store failed, these rows would stay in the journal with the rest.
        for row, reason in bad:
            self._reject([row], reason)

    @contextlib.contextmanager
    def _watched(self, conn: sa.Connection) -> Iterator[None]:
        """A store call the watchdog may break if it hangs."""
        self._busy = (time.monotonic(), conn.connection.dbapi_connection)
        try:
            yield
        finally:
            self._busy = None

    def _watch(self) -> None:
        """Break a store call stuck past stall_timeout_s (see the module docstring)."""
        while True:
            time.sleep(min(self._stall_timeout_s / 4, 0.5))
            busy = self._busy
            if busy is not None and time.monotonic() - busy[0] > self._stall_timeout_s:
                log.warning("prediction store call stuck for %.0f s: breaking its connection",
                            time.monotonic() - busy[0])  # fmt: skip
                interrupt(busy[1])
                self._busy = None if self._busy is busy else self._busy

    def _reject(self, rows: list[Any], reason: str) -> None:
        if not rows:
            return
        log.error("%d prediction rows dead-lettered in %s: %s", len(rows),
                  self._spool_dir / REJECTED, reason)  # fmt: skip
        try:
            fd = os.open(self._spool_dir / REJECTED, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"reason": reason, "row": row}) + "\n" for row in rows)
                fh.flush()
                os.fsync(fh.fileno())
            self._count("rows_rejected", len(rows))
        except Exception:
            log.exception("could not keep %d rejected prediction rows", len(rows))
            self._count("rows_dropped", len(rows))

    @staticmethod
    def _clean(row: Any) -> dict[str, Any]:
        """JSON-safe and timestamped now, so the journal and the store get identical rows."""
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
            msg = "prediction store %s unavailable (%s); rows stay in the journal %s"
            log.warning(msg, self._name, _summary(exc), self._spool_dir)
        self._store_up = False

    def _count(self, key: str, n: int) -> None:
        with self._count_lock:
            self._counts[key] += n
