"""The prediction log writer against real SQLite and PostgreSQL: every submitted row lands
exactly once, through a PostgreSQL outage (a TCP proxy we cut), a close during an outage and a
crash that leaves its journal behind."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from serving.logbatch import PredictionColumns
from serving.logwriter import REJECTED, LogUnavailable, PredictionLogWriter
from serving.store import make_engine, upgrade
from tests.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]


def row(i: int) -> dict:
    return {"prediction_id": f"p{i:06d}", "created_at": datetime.now(UTC), "request_id": f"r{i}",
            "model_name": "credit-risk", "model_version": "3", "customer_id": f"c{i % 7}",
            "inputs": {"LIMIT_BAL": 20000.0, "PAY_0": 2}, "probability": 0.31, "risk_score": 612,
            "risk_band": "high", "decision": "review", "reasons": ["PAY_0"]}  # fmt: skip


def ids(n: int, start: int = 0) -> set[str]:
    return {f"p{i:06d}" for i in range(start, start + n)}


def stored_ids(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT prediction_id FROM predictions")).scalars())
    finally:
        engine.dispose()


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def spool_files(spool: Path) -> list[Path]:
    """Journal segments still on disk (each deleted once all its rows are in the store)."""
    return sorted(spool.glob("journal-*.jsonl"))


def journal_ids(spool: Path) -> set[str]:
    """prediction_ids of the dict rows held in the journal."""
    return {json.loads(line)["prediction_id"] for p in spool_files(spool)
            for line in p.read_text().splitlines() if line}  # fmt: skip


def journal_rows(spool: Path) -> int:
    """Rows held in the journal: one per row line, a block's rows per block line."""
    lines = [
        json.loads(line) for p in spool_files(spool) for line in p.read_text().splitlines() if line
    ]
    return sum(len(o["columns"]["prediction_id"]) if "columns" in o else 1 for o in lines)


@pytest.fixture
def pg_url(pg_db) -> str:
    url = pg_db()
    upgrade(url)
    return url


@pytest.fixture
def proxied(pg_url):
    """(direct url, url through a live proxy, proxy)."""
    target = sa.make_url(pg_url)
    proxy = TcpProxy((target.host, target.port or 5432))
    proxy.restore()
    via = target.set(port=proxy.port).render_as_string(hide_password=False)
    yield pg_url, via, proxy
    proxy.cut()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db' / 'predictions.db'}"
        upgrade(url)
        return url
    return request.getfixturevalue("pg_url")


def test_every_row_lands_exactly_once(db_url, tmp_path):
    writer = PredictionLogWriter(db_url, tmp_path / "spool", batch_size=64)
    for i in range(300):
        r = row(i)
        if i % 3 == 0:
            r["created_at"] = r["created_at"].isoformat()  # the service may send strings
        if i % 5 == 0:
            r["inputs"] = {"PAY_0": np.int64(2), "BILL": np.float32(1.5), "AGE": float("nan")}
        writer.submit(r)
    for i in range(100):
        writer.submit(row(i))  # a client retry: must not duplicate
    writer.close()

    got = stored_ids(db_url)
    assert len(got) == 300 and set(got) == ids(300)
    stats = writer.stats()
    assert stats["rows_written"] == 400  # rows committed, duplicates included
    assert stats["rows_dropped"] == stats["rows_spooled"] == stats["rows_rejected"] == 0
    assert stats["queue_depth"] == 0 and stats["store_up"]
    assert spool_files(tmp_path / "spool") == []


def columns(start: int, n: int, **fixed) -> PredictionColumns:
    """A block like the service submits: shared timestamp and model, JSON text columns."""
    per_row = {"request_id": [f"r{i % 2}" for i in range(n)], "customer_id": [None] * n,
               "inputs": [json.dumps({"LIMIT_BAL": 1000.0 * i, "PAY_0": i % 3}) for i in range(n)],
               "probability": [0.01 * (i % 90) for i in range(n)], "risk_score": [i % 90 for i in range(n)],
               "risk_band": ["low"] * n, "decision": ["approve"] * n, "reasons": ["[]"] * n}  # fmt: skip
    per_row.update({k: [v] * n for k, v in fixed.items()})
    return PredictionColumns(created_at=datetime.now(UTC).isoformat(), model_name="credit-risk",
                             model_version="3", prediction_id=sorted(ids(n, start)), **per_row)  # fmt: skip


def test_column_blocks_land_exactly_once_with_their_values(db_url, tmp_path):
    writer = PredictionLogWriter(db_url, tmp_path / "spool", batch_size=64)
    block = columns(0, 250)  # more than one 100-row statement, request ids differ per row
    writer.submit_columns(block)
    writer.submit_columns(columns(250, 30, customer_id="c1", reasons='[{"feature":"PAY_0"}]'))
    writer.submit(row(400))  # dict rows and blocks in one batch
    writer.submit_columns(columns(0, 50))  # a replayed block: nothing duplicated
    writer.close()
    assert sorted(stored_ids(db_url)) == sorted(ids(280) | {"p000400"})
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            got = {r.prediction_id: r for r in conn.execute(sa.text("SELECT * FROM predictions"))}
    finally:
        engine.dispose()
    as_json = lambda v: v if isinstance(v, dict | list) else json.loads(v)  # noqa: E731
    for i, pid in enumerate(block.prediction_id):
        r = got[pid]
        assert (r.request_id, r.risk_score, r.model_version) == (f"r{i % 2}", i % 90, "3")
        assert r.probability == pytest.approx(0.01 * (i % 90))
        assert as_json(r.inputs) == {"LIMIT_BAL": 1000.0 * i, "PAY_0": i % 3}
        assert as_json(r.reasons) == [] and r.customer_id is None
    assert got["p000260"].customer_id == "c1" and as_json(got["p000260"].reasons) == [
        {"feature": "PAY_0"}
    ]
    assert writer.stats()["rows_written"] == 331 and writer.stats()["rows_dropped"] == 0


def test_column_blocks_spool_during_an_outage_and_replay(proxied, tmp_path):
    direct, via, proxy = proxied
    writer = PredictionLogWriter(via, tmp_path / "spool", retry_interval_s=0.2)
    writer.submit_columns(columns(0, 40))
    wait_for(lambda: writer.stats()["rows_written"] == 40, "the first block")
    proxy.cut()
    writer.submit_columns(columns(40, 60))
    wait_for(lambda: writer.stats()["rows_spooled"] == 60, "the block spooled")
    proxy.restore()
    # the segment is replayed whole: the 40 rows committed before the cut are resent, harmlessly
    wait_for(lambda: writer.stats()["rows_replayed"] == 100, "the journal replayed")
    writer.close()
    assert sorted(stored_ids(direct)) == sorted(ids(100))
    assert spool_files(tmp_path / "spool") == []


def test_postgres_outage_loses_and_duplicates_nothing(proxied, tmp_path):
    direct, via, proxy = proxied
    spool = tmp_path / "spool"
    writer = PredictionLogWriter(via, spool, batch_size=50, retry_interval_s=0.2)
    submitted: list[str] = []
    stop = threading.Event()

    def traffic() -> None:  # steady requests straight through the cut, the outage and restore
        i = 0
        while not stop.is_set():
            writer.submit(row(i))
            submitted.append(f"p{i:06d}")
            if i % 10 == 0:
                writer.submit(row(max(i - 5, 0)))  # retries, also during the outage
            i += 1
            time.sleep(0.001)

    client = threading.Thread(target=traffic)
    client.start()
    try:
        wait_for(lambda: writer.stats()["rows_written"] >= 100, "rows before the outage")
        proxy.cut()
        wait_for(lambda: not writer.stats()["store_up"], "the writer to see the outage")
        wait_for(lambda: writer.stats()["rows_spooled"] >= 200, "rows spooled during the outage")
        assert spool_files(spool)
        proxy.restore()
        wait_for(lambda: writer.stats()["store_up"], "the writer to see the store again")
        time.sleep(0.3)  # more rows after the restore
    finally:
        stop.set()
        client.join()
    writer.close()

    got = stored_ids(direct)
    assert len(got) == len(set(got)) == len(submitted)
    assert set(got) == set(submitted)
    stats = writer.stats()
    assert stats["rows_dropped"] == 0 and stats["rows_rejected"] == 0
    assert stats["rows_spooled"] > 0 and stats["rows_replayed"] >= stats["rows_spooled"]
    assert spool_files(spool) == [] and not (spool / REJECTED).exists()


def test_close_during_outage_spools_and_next_writer_replays(proxied, tmp_path):
    direct, via, proxy = proxied
    spool = tmp_path / "spool"
    proxy.cut()  # down before the writer even starts
    writer = PredictionLogWriter(via, spool, retry_interval_s=0.1)
    for i in range(30):
        writer.submit(row(i))
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5
    assert writer.stats()["rows_spooled"] == 30 and writer.stats()["rows_dropped"] == 0
    with pytest.raises(LogUnavailable):  # after close: nowhere durable, so not accepted
        writer.submit(row(30))
    assert journal_rows(spool) == 30 and stored_ids(direct) == []

    proxy.restore()
    after = PredictionLogWriter(via, spool)
    wait_for(lambda: after.stats()["rows_replayed"] == 30, "the leftover journal to replay")
    after.close()
    assert sorted(stored_ids(direct)) == sorted(ids(30))
    assert spool_files(spool) == []


def test_close_returns_in_time_when_the_store_hangs(proxied, tmp_path):
    direct, via, proxy = proxied
    spool = tmp_path / "spool"
    writer = PredictionLogWriter(via, spool)
    writer.submit(row(0))
    wait_for(lambda: writer.stats()["rows_written"] == 1, "the first row")
    proxy.restore(stall=True)  # live connections die; new ones hang until connect_timeout
    for i in range(1, 50):
        writer.submit(row(i))
    time.sleep(0.2)  # the writer is now stuck connecting with rows in hand
    started = time.monotonic()
    writer.close(timeout_s=0.3)
    assert time.monotonic() - started < 1.0
    assert journal_ids(spool) >= ids(49, 1) and writer.stats()["rows_dropped"] == 0

    writer._thread.join(10)  # the hung attempt times out; its thread stops
    assert not writer._thread.is_alive()
    proxy.restore()
    after = PredictionLogWriter(via, spool)
    wait_for(lambda: not spool_files(spool), "the spool to drain")
    after.close()
    got = stored_ids(direct)
    assert len(got) == 50 and set(got) == ids(50)


CRASHING_WRITER = """
import os, sys, time
from datetime import UTC, datetime
from pathlib import Path
from serving.logwriter import PredictionLogWriter

writer = PredictionLogWriter(sys.argv[1], Path(sys.argv[2]), flush_interval_s=0.01,
                             retry_interval_s=0.05)
for i in range(40):
    writer.submit({"prediction_id": f"p{i:06d}", "created_at": datetime.now(UTC),
                   "model_name": "credit-risk", "model_version": "3", "inputs": {"PAY_0": i},
                   "probability": 0.5, "risk_score": 600, "risk_band": "medium",
                   "decision": "approve"})
os._exit(1)  # crash right after the last submit returned: no close(), no cleanup
"""


def test_spool_left_by_a_crashed_process_is_replayed(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'predictions.db'}"  # not migrated yet: inserts fail
    spool = tmp_path / "spool"
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, url, str(spool)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert journal_rows(spool) == 40  # every submitted row, durable before submit returned

    upgrade(url)
    writer = PredictionLogWriter(url, spool)
    wait_for(lambda: writer.stats()["rows_replayed"] == 40, "the crashed process's spool")
    writer.close()
    assert sorted(stored_ids(url)) == sorted(ids(40))
    assert spool_files(spool) == []


def test_bad_rows_are_set_aside_and_the_rest_is_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'predictions.db'}"
    upgrade(url)
    spool = tmp_path / "spool"
    writer = PredictionLogWriter(url, spool)
    no_model = {**row(1), "model_name": None}  # NOT NULL: the database refuses it
    no_id = {k: v for k, v in row(2).items() if k != "prediction_id"}
    for item in (row(0), no_model, no_id, {**row(3), "probability": "high"}, "junk", row(4)):
        writer.submit(item)  # type: ignore[arg-type]
    writer.close()

    assert sorted(stored_ids(url)) == ["p000000", "p000004"]
    stats = writer.stats()
    assert stats["rows_rejected"] == 4 and stats["rows_dropped"] == 0 and stats["store_up"]
    rejected = [json.loads(line) for line in (spool / REJECTED).read_text().splitlines()]
    assert {r["row"].get("prediction_id") for r in rejected} == {"p000001", None, "p000003"}


def test_submit_does_not_wait_for_the_store(proxied, tmp_path):
    _, via, proxy = proxied
    proxy.cut()
    writer = PredictionLogWriter(via, tmp_path / "spool")
    started = time.monotonic()
    for start in range(0, 20_000, 100):  # blocks, as the service submits its batches
        writer.submit_columns(columns(start, 100))
    assert time.monotonic() - started < 2.0
    writer.close()
    assert writer.stats()["rows_spooled"] == journal_rows(tmp_path / "spool") == 20_000


def interventions_of(url: str) -> list[tuple[str, str, str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(
                sa.text("SELECT customer_id, prediction_id, action FROM interventions")))  # fmt: skip
    finally:
        engine.dispose()


def triggered_block(start: int, n: int, customers: list[str]) -> PredictionColumns:
    """A block whose rows each triggered an intervention for their customer."""
    block = columns(start, n)
    block.customer_id[:] = customers
    block.interventions.extend((i, "payment_reminder") for i in range(n))
    return block


def test_interventions_are_recorded_with_their_predictions_once(db_url, tmp_path):
    """Off the request path: written in the prediction's transaction; one per customer within
    the cooldown; a re-sent block (a replay) records nothing twice."""
    writer = PredictionLogWriter(db_url, tmp_path / "spool", cooldown_s=3600)
    writer.submit_columns(triggered_block(0, 4, ["a", "b", "a", "c"]))
    wait_for(lambda: writer.stats()["rows_written"] == 4, "the block")
    again = triggered_block(0, 4, ["a", "b", "a", "c"])
    writer.submit_columns(again)
    row = {**again.rows()[1], "prediction_id": "p999999", "intervention": "restructuring_offer"}
    writer.submit(row)  # a dict row (spool replay, PostgreSQL) carries its action the same way
    writer.close()
    got = interventions_of(db_url)
    assert [(c, p) for c, p, _ in got] == [("a", "p000000"), ("b", "p000001"), ("c", "p000003")]


def test_interventions_spool_during_an_outage_and_are_recorded_once(proxied, tmp_path):
    direct, via, proxy = proxied
    writer = PredictionLogWriter(via, tmp_path / "spool", retry_interval_s=0.2, cooldown_s=3600)
    proxy.cut()
    writer.submit_columns(triggered_block(0, 30, [f"k{i}" for i in range(30)]))
    wait_for(lambda: writer.stats()["rows_spooled"] == 30, "the block spooled")
    assert interventions_of(direct) == []
    proxy.restore()
    wait_for(lambda: writer.stats()["rows_replayed"] == 30, "the journal replayed")
    writer.close()
    got = interventions_of(direct)
    assert [c for c, _, _ in got] == sorted(f"k{i}" for i in range(30))


def test_a_row_the_store_cannot_hold_is_dead_lettered_and_never_blocks(db_url, tmp_path):
    """A NUL character (PostgreSQL refuses it with a bare ValueError) is the row's fault, not
    an outage: that row goes to rejected.jsonl with the reason, every other row is written,
    live and when a journal holding it is replayed."""
    spool = tmp_path / "spool"
    writer = PredictionLogWriter(db_url, spool, batch_size=10)
    poisoned = {**row(5), "request_id": "r\x00"}
    block = columns(100, 20)
    block.request_id[3] = "x\x00y"
    for i in range(10):
        writer.submit(poisoned if i == 5 else row(i))
    writer.submit_columns(block)
    writer.close()
    stored = set(stored_ids(db_url))
    stats = writer.stats()
    if db_url.startswith("postgresql"):
        assert stored == (ids(10) | ids(20, 100)) - {"p000005", "p000103"}
        assert stats["rows_rejected"] == 2 and stats["store_up"]
        rejected = [json.loads(line) for line in (spool / REJECTED).read_text().splitlines()]
        assert {r["row"]["prediction_id"] for r in rejected} == {"p000005", "p000103"}
        assert all("NUL" in r["reason"] for r in rejected)
    else:  # SQLite keeps NUL characters
        assert stored == ids(10) | ids(20, 100)
    assert spool_files(spool) == []


def test_a_stalled_store_is_detected_and_loses_nothing(proxied, tmp_path):
    """The network path stalls with connections open (no TCP or server timeout fires): the
    writer reports the store down within its stall timeout, keeps accepting rows into the
    journal with memory bounded, and writes every row once the path flows again."""
    direct, via, proxy = proxied
    spool = tmp_path / "spool"
    writer = PredictionLogWriter(via, spool, stall_timeout_s=1.0, retry_interval_s=0.2,
                                 max_queued_rows=500)  # fmt: skip
    writer.submit_columns(columns(0, 50))
    wait_for(lambda: writer.stats()["rows_written"] == 50, "rows before the stall")
    proxy.freeze()
    stalled_at = time.monotonic()
    took = []
    for start in range(50, 2050, 100):
        began = time.monotonic()
        writer.submit_columns(columns(start, 100))  # never waits on the stalled store
        took.append(time.monotonic() - began)
    # each call returns sooner than the stall timeout: none waited on the stalled store (a
    # wait would last until the watchdog fires); on a loaded disk a journal fsync is slow, so
    # the calls' sum is no bound
    assert max(took) < 1.0, took
    wait_for(lambda: not writer.stats()["store_up"], "the stall to be seen", timeout_s=5)
    assert time.monotonic() - stalled_at < 3.0
    assert writer.stats()["queue_depth"] <= 500  # the rest is in the journal only
    proxy.thaw()
    proxy.restore()
    wait_for(lambda: len(stored_ids(direct)) == 2050, "every row after the stall", timeout_s=30)
    writer.close()
    got = stored_ids(direct)
    assert len(got) == len(set(got)) == 2050 and set(got) == ids(2050)
    assert spool_files(spool) == []


def test_a_torn_journal_tail_is_skipped_and_the_rest_replayed(tmp_path):
    """A power cut can leave half a line at a segment's end: those rows were never
    acknowledged. Every whole line before it is replayed."""
    url = f"sqlite:///{tmp_path / 'db' / 'predictions.db'}"
    upgrade(url)
    spool = tmp_path / "spool"
    spool.mkdir()
    lines = [
        json.dumps({**row(i), "created_at": row(i)["created_at"].isoformat()}) for i in range(5)
    ]
    (spool / "journal-00000000000000000001-1.jsonl").write_text("\n".join(lines) + '\n{"predic')
    writer = PredictionLogWriter(url, spool)
    wait_for(lambda: writer.stats()["rows_replayed"] == 5, "the torn segment's whole lines")
    writer.close()
    assert sorted(stored_ids(url)) == sorted(ids(5))
    assert not (spool / REJECTED).exists() and spool_files(spool) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs for the journal (root only; where mounting is refused the test skips)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_journal_disk_refuses_rows_instead_of_losing_them(tiny_disk, proxied):
    """Store down and the journal's disk full: submit raises LogUnavailable (the service
    answers 503), nothing half-written is left, and once space is back rows are taken again
    and every accepted row reaches the store."""
    direct, via, proxy = proxied
    spool = tiny_disk / "spool"
    proxy.cut()
    writer = PredictionLogWriter(via, spool, retry_interval_s=0.2)
    accepted, refused = [], 0
    for start in range(0, 20_000, 20):  # ~3 MB of rows for a 1 MiB disk
        block = columns(start, 20)
        try:
            writer.submit_columns(block)
            accepted += block.prediction_id
        except LogUnavailable:
            refused += 20
    assert refused > 0 and accepted, (refused, len(accepted))
    assert journal_rows(spool) == len(accepted)  # whole lines only: every failed write undone
    assert not list(spool.glob("*.tmp")) and not writer.probe()
    ballast = sorted(spool.glob("journal-*"))[0]
    assert writer.stats()["journal_failures"] >= refused // 20
    proxy.restore()
    wait_for(lambda: not ballast.exists(), "the replay to free the disk", timeout_s=30)
    assert writer.probe()
    writer.submit_columns(columns(90_000, 20))
    writer.close()
    got = stored_ids(direct)
    assert len(got) == len(set(got)) and set(got) == set(accepted) | ids(20, 90_000)


def test_the_journal_stays_small_while_the_store_keeps_up(tmp_path):
    """Segments whose rows are all in the store are deleted as they fill: a healthy node's
    journal holds about a second of rows, so a small disk suffices."""
    url = f"sqlite:///{tmp_path / 'db' / 'predictions.db'}"
    upgrade(url)
    spool = tmp_path / "spool"
    writer = PredictionLogWriter(url, spool)
    biggest = 0
    for start in range(0, 30_000, 100):
        writer.submit_columns(columns(start, 100))
        biggest = max(biggest, sum(p.stat().st_size for p in spool_files(spool)))
        if start % 3000 == 0:
            wait_for(lambda: writer.stats()["queue_depth"] == 0, "the writer to catch up")
    writer.close()
    assert len(stored_ids(url)) == 30_000 and spool_files(spool) == []
    assert biggest < 4 * writer.journal.settled_segment_bytes


def test_a_live_writer_replays_the_journal_of_a_worker_that_died(tmp_path):
    """A worker killed mid-traffic leaves its segment behind; the surviving writer sharing the
    directory picks it up on its own (no restart needed)."""
    url = f"sqlite:///{tmp_path / 'db' / 'predictions.db'}"
    upgrade(url)
    spool = tmp_path / "spool"
    live = PredictionLogWriter(url, spool)
    unreachable = "postgresql+psycopg2://postgres@127.0.0.1:1/none"  # its rows stay journaled
    proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, unreachable, str(spool)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    wait_for(lambda: set(stored_ids(url)) == ids(40), "the dead worker's rows", timeout_s=30)
    live.close()
    assert spool_files(spool) == []
