"""Stores copied to files and back, for backups (pipelines/backup.py decides what and where).

- SQLite: the online backup API, in one step, so the copy is one consistent snapshot taken
  inside a read transaction; in WAL mode the service keeps writing meanwhile.
- PostgreSQL: `pg_dump --format=custom` and `pg_restore`. The dump reads a snapshot this
  module exports (`pg_export_snapshot`), and the row counts are taken in that same snapshot,
  so a manifest's counts are exactly what the dump holds.
- Directories (MLflow artifacts, the DVC cache or local remote): an uncompressed tar.

Thin adapters: no policy here beyond refusing to overwrite what the caller did not allow."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sqlalchemy as sa

from riskloop.errors import RiskloopError
from riskloop.stores import normalize_db_url

SQLITE_BUSY_TIMEOUT_S = 30.0
# pg_dump waits this long for a table lock (a migration holding one) before giving up.
PG_LOCK_WAIT_MS = 60_000
_BLOCK = 1 << 20


class ArchiveError(RiskloopError):
    """A store could not be copied or restored; the message names the store and the cause."""


# --- files --------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def private_file(path: Path) -> None:
    """Backups hold personal data (the prediction log): owner-only, like the store itself."""
    path.chmod(0o600)


def dir_is_empty(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def tar_dir(src: Path, dst: Path) -> dict[str, int]:
    """`src` as an uncompressed tar (paths relative to it); {files, content_bytes} in it.
    Uncompressed: models and parquet files are compressed already, and gzip would be the
    slowest step of a backup."""
    files = size = 0
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(src, arcname=".", recursive=False)
        for path in sorted(src.rglob("*")):
            tar.add(path, arcname=path.relative_to(src).as_posix(), recursive=False)
            if path.is_file() and not path.is_symlink():
                files += 1
                size += path.stat().st_size
    return {"files": files, "content_bytes": size}


def untar(src: Path, dst: Path, overwrite: bool) -> dict[str, int]:
    """Extract a `tar_dir` tar into `dst`; {files, content_bytes} extracted. `overwrite`: a file the
    tar holds replaces one of the same name (read-only DVC cache files included); files it
    does not hold are left alone. Extraction uses tarfile's `data` filter (no absolute paths,
    no links out of `dst`, no device files)."""
    dst.mkdir(parents=True, exist_ok=True)
    files = size = 0
    with tarfile.open(src, "r") as tar:
        members = tar.getmembers()
        for member in members:
            target = dst / member.name
            if member.isfile():
                files += 1
                size += member.size
                if target.exists() or target.is_symlink():
                    if not overwrite:
                        raise ArchiveError(f"{target} exists: refusing to overwrite it")
                    target.unlink()
        tar.extractall(dst, members=members, filter="data")
    return {"files": files, "content_bytes": size}


# --- databases ----------------------------------------------------------------------------


def backend(url: str) -> str:
    """'sqlite' or 'postgresql' (anything else is refused)."""
    name = sa.make_url(normalize_db_url(url, "database URL")).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise ArchiveError(f"backups support SQLite and PostgreSQL stores, not {name}")
    return name


def sqlite_path(url: str) -> Path:
    database = sa.make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ArchiveError(f"{url}: only SQLite files can be backed up or restored")
    return Path(database).expanduser().resolve()


def _counts(conn: sa.Connection, tables: Iterable[str]) -> dict[str, int]:
    """Rows of each of `tables` that exists (a store at an older schema lacks some)."""
    present = set(sa.inspect(conn).get_table_names())
    return {
        t: conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one()
        for t in tables
        if t in present
    }


@contextlib.contextmanager
def _engine(url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(normalize_db_url(url, "database URL"), poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def count_rows(url: str, tables: Iterable[str]) -> dict[str, int]:
    with _engine(url) as engine, engine.connect() as conn:
        return _counts(conn, tables)


def is_empty(url: str) -> bool:
    """No tables at all: a missing SQLite file or PostgreSQL database counts as empty."""
    if backend(url) == "sqlite":
        path = sqlite_path(url)
        if not path.exists() or path.stat().st_size == 0:
            return True
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return (
                conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
                == 0
            )
    if not pg_database_exists(url):
        return True
    with _engine(url) as engine, engine.connect() as conn:
        n = conn.exec_driver_sql(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).scalar_one()
    return n == 0


def sqlite_backup(url: str, dst: Path, tables: Iterable[str]) -> dict[str, int]:
    """Copy a live SQLite store into `dst` (one self-contained file); row counts of the copy."""
    src = sqlite_path(url)
    if not src.exists():
        raise ArchiveError(f"{src} does not exist")
    with (
        contextlib.closing(sqlite3.connect(src, timeout=SQLITE_BUSY_TIMEOUT_S)) as source,
        contextlib.closing(sqlite3.connect(dst)) as copy,
    ):
        # pages=-1: the whole database in one step, under one read transaction. Stepping
        # would restart the copy each time the service commits, and never end under traffic.
        source.backup(copy, pages=-1)
        # the copy keeps the source's WAL flag; a rollback journal makes it one file
        copy.execute("PRAGMA journal_mode=DELETE")
        counts = _sqlite_counts(copy, tables)
    private_file(dst)
    return counts


def _sqlite_counts(conn: sqlite3.Connection, tables: Iterable[str]) -> dict[str, int]:
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return {
        t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables if t in present
    }


def sqlite_restore(src: Path, url: str, tables: Iterable[str]) -> dict[str, int]:
    """Write a `sqlite_backup` copy into the target store (created if missing; replaced
    wholesale if not, through SQLite itself so a stale -wal file cannot resurface)."""
    target = sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(src)) as source,
        contextlib.closing(sqlite3.connect(target, timeout=SQLITE_BUSY_TIMEOUT_S)) as dest,
    ):
        source.backup(dest, pages=-1)
        counts = _sqlite_counts(dest, tables)
    private_file(target)
    return counts


def _pg_conn(url: str) -> tuple[str, dict[str, str]]:
    """(a libpq conninfo string, environment) for pg_dump/pg_restore: the password goes in
    PGPASSWORD, never on a command line other users can read."""
    u = sa.make_url(normalize_db_url(url, "database URL"))
    fields = {"host": u.host, "port": u.port, "user": u.username, "dbname": u.database}
    fields.update({k: v if isinstance(v, str) else v[-1] for k, v in u.query.items()})

    def quoted(value: object) -> str:
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    conninfo = " ".join(f"{k}={quoted(v)}" for k, v in fields.items() if v is not None)
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = u.password
    return conninfo, env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise ArchiveError(
            f"{cmd[0]} not found: install the PostgreSQL client tools ({what})"
        ) from exc
    if proc.returncode != 0:
        raise ArchiveError(
            f"{what}: {cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )


def pg_dump(url: str, dst: Path, tables: Iterable[str]) -> dict[str, int]:
    """`pg_dump --format=custom` of the whole database into `dst`, and row counts of
    `tables`, both from one snapshot (held open by this connection while pg_dump runs)."""
    conninfo, env = _pg_conn(url)
    with _engine(url) as engine, engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        snapshot = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
        counts = _counts(conn, tables)
        _run(["pg_dump", "--format=custom", f"--snapshot={snapshot}", f"--lock-wait-timeout={PG_LOCK_WAIT_MS}",
              f"--file={dst}", f"--dbname={conninfo}"], env, f"dump of {url.split('@')[-1]}")  # fmt: skip
        conn.rollback()
    private_file(dst)
    return counts


def pg_database_exists(url: str) -> bool:
    u = sa.make_url(normalize_db_url(url, "database URL"))
    admin_url = u.set(database="postgres").render_as_string(hide_password=False)
    with _engine(admin_url) as admin, admin.connect() as conn:
        found = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": u.database}
        )
        return found.first() is not None


def pg_create_database(url: str) -> None:
    """Create the target database if it does not exist (restore into a fresh one)."""
    if pg_database_exists(url):
        return
    u = sa.make_url(normalize_db_url(url, "database URL"))
    admin = sa.create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT",
                             poolclass=sa.pool.NullPool)  # fmt: skip
    try:
        with admin.connect() as conn:
            name = conn.dialect.identifier_preparer.quote(u.database or "")
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        admin.dispose()


def pg_restore(src: Path, url: str, tables: Iterable[str], replace: bool) -> dict[str, int]:
    """`pg_restore` a custom-format dump into the target database (created if missing), in
    one transaction: a failure leaves the target as it was. Ownership and grants are the
    target's own (--no-owner --no-privileges). `replace`: objects the dump holds are dropped
    first (--clean); objects it does not hold are left alone."""
    pg_create_database(url)
    conninfo, env = _pg_conn(url)
    cmd = ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
           f"--dbname={conninfo}"]  # fmt: skip
    if replace:
        cmd += ["--clean", "--if-exists"]
    _run([*cmd, str(src)], env, f"restore into {url.split('@')[-1]}")
    return count_rows(url, tables)


def replace_prefix(url: str, columns: Iterable[tuple[str, str]], old: str, new: str) -> int:
    """In each (table, column) that exists, a value equal to the directory URI `old` or
    under it (`old/…`) is moved to `new` (MLflow keeps absolute artifact locations); returns
    rows changed. One transaction: all moved or none."""
    changed = 0
    with _engine(url) as engine, engine.begin() as conn:
        present = set(sa.inspect(conn).get_table_names())
        for table, column in columns:
            if table not in present:
                continue
            c = sa.column(column, sa.String)
            under = sa.or_(c == old, sa.func.substr(c, 1, len(old) + 1) == old + "/")
            moved = sa.literal(new, sa.String) + sa.func.substr(c, len(old) + 1, type_=sa.String)
            stmt = sa.update(sa.table(table, c)).where(under).values({column: moved})
            changed += conn.execute(stmt).rowcount
    return changed
