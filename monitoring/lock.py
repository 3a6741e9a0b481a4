"""One run of a job at a time, across processes and machines: a lease per job name in the
prediction store's job_locks table. A manual `riskloop monitor`, a Kubernetes CronJob and
`riskloop schedule` all take the same lease, so they never overlap.

A lease expires `ttl_s` after it was last renewed: a holder that dies (kill -9, a lost node)
frees it within ttl_s, and a live one renews it from a heartbeat thread for as long as its work
takes. Expiry compares the callers' clocks (UTC), so ttl_s must stay well above their skew."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from riskloop.errors import LockHeld
from serving.store import as_utc, dialect_insert, job_locks, now_utc

log = logging.getLogger("lock")

MONITOR = "monitor"  # the monitoring job and the retrain it runs
TTL_S = 300.0  # a dead holder blocks the next run for at most this long
# sysexits' EX_TEMPFAIL: the run did not happen because another held the lock; try later
EXIT_LOCKED = 75
# A process the holder starts for its work (the scheduler's job) joins the lease named here
# ("<name>=<holder>") instead of finding it held by its own parent.
HOLDER_ENV = "RISKLOOP_LOCK_HOLDER"

Bind = sa.Engine | sa.Connection


def new_holder() -> str:
    """A holder id that says where the run is: host, pid and a random part (pids repeat)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def child_env(name: str, holder: str) -> dict[str, str]:
    """Environment for a process that does the holder's work under its lease."""
    return {HOLDER_ENV: f"{name}={holder}"}


@contextlib.contextmanager
def _begin(bind: Bind) -> Iterator[sa.Connection]:
    """A connection in a transaction: the caller's own (it commits), or a new one."""
    if isinstance(bind, sa.Connection):
        yield bind
    else:
        with bind.begin() as conn:
            yield conn


def acquire(bind: Bind, name: str, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
    """Take `name`'s lease for ttl_s if it is free, expired or already `holder`'s (then it is
    renewed). One INSERT … ON CONFLICT DO UPDATE … WHERE: the database decides, so of two
    callers racing for it exactly one wins (no read-then-write gap)."""
    at = as_utc(now) if now is not None else now_utc()
    with _begin(bind) as conn:
        stmt = dialect_insert(conn, job_locks).values(
            name=name, holder=holder, acquired_at=at, expires_at=at + timedelta(seconds=ttl_s)
        )
        mine = job_locks.c.holder == stmt.excluded.holder
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "holder": stmt.excluded.holder,
                # a holder re-acquiring keeps its `since`
                "acquired_at": sa.case(
                    (mine, job_locks.c.acquired_at), else_=stmt.excluded.acquired_at
                ),
                "expires_at": stmt.excluded.expires_at,
            },
            where=sa.or_(mine, job_locks.c.expires_at <= stmt.excluded.acquired_at),
        )
        return conn.execute(stmt).rowcount == 1


def renew(bind: Bind, name: str, holder: str, ttl_s: float, now: datetime | None = None) -> bool:
    """Extend the lease to ttl_s from now; False if `holder` no longer has it."""
    at = as_utc(now) if now is not None else now_utc()
    with _begin(bind) as conn:
        stmt = (
            sa.update(job_locks)
            .where(job_locks.c.name == name, job_locks.c.holder == holder)
            .values(expires_at=at + timedelta(seconds=ttl_s))
        )
        return conn.execute(stmt).rowcount == 1


def release(bind: Bind, name: str, holder: str) -> bool:
    """Free the lease if `holder` has it; False if it had none (expired and taken over)."""
    with _begin(bind) as conn:
        stmt = sa.delete(job_locks).where(job_locks.c.name == name, job_locks.c.holder == holder)
        return conn.execute(stmt).rowcount == 1


def current(bind: Bind, name: str) -> dict[str, Any] | None:
    """{holder, acquired_at, expires_at} of `name`'s lease (it may have expired), or None."""
    with _begin(bind) as conn:
        row = conn.execute(sa.select(job_locks).where(job_locks.c.name == name)).first()
    if row is None:
        return None
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in row._mapping.items()}


def held_error(name: str, lease: dict[str, Any] | None) -> LockHeld:
    """The LockHeld for `name` as its lease row describes it (None: freed meanwhile)."""
    if lease is None:
        return LockHeld(name, "unknown (released meanwhile)", now_utc())
    return LockHeld(name, lease["holder"], lease["acquired_at"])


class Heartbeat:
    """Renews a held lease every ttl_s / 3 from a daemon thread until stopped. A renewal the
    store refuses (another holder took the lease over after it expired) sets `lost` and is
    logged; a store that does not answer is retried at the next beat."""

    def __init__(self, engine: sa.Engine, name: str, holder: str, ttl_s: float) -> None:
        self.engine, self.name, self.holder, self.ttl_s = engine, name, holder, ttl_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if renew(self.engine, self.name, self.holder, self.ttl_s):
                    continue
            except sa.exc.SQLAlchemyError as exc:
                log.warning("could not renew the %s lock (%s); retrying", self.name, exc)
                continue
            self.lost = True
            log.error("lost the %s lock: it expired and another run took it over; "
                      "this run may now overlap it", self.name)  # fmt: skip
            return


@contextlib.contextmanager
def held(engine: sa.Engine, name: str, ttl_s: float = TTL_S) -> Iterator[Heartbeat]:
    """Hold `name`'s lease while the block runs, renewing it; LockHeld (naming the holder and
    since when) if another has it. A process started with HOLDER_ENV naming this lease joins
    it and leaves releasing it to the holder that started it."""
    inherited = os.environ.get(HOLDER_ENV, "").partition("=")
    joined = inherited[0] == name and bool(inherited[2])
    holder = inherited[2] if joined else new_holder()
    for _ in range(2):  # a second try only when the holder released it between the two reads
        if acquire(engine, name, holder, ttl_s):
            break
        lease = current(engine, name)
        if lease is not None:
            raise held_error(name, lease)
    else:
        raise held_error(name, None)
    try:
        with Heartbeat(engine, name, holder, ttl_s) as beat:
            yield beat
    finally:
        if not joined:
            try:
                release(engine, name, holder)
            except sa.exc.SQLAlchemyError as exc:  # it expires by itself within ttl_s
                log.warning("could not release the %s lock (%s); it expires in %.0fs",
                            name, exc, ttl_s)  # fmt: skip
