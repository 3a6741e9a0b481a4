"""`riskloop schedule` and the job lock: what is due when (pure), the lease on real SQLite and
PostgreSQL (racing threads and processes, expiry, heartbeat), and the scheduler as a real
process: one run for the latest due time, the others recorded as missed, never a double run,
`locked` while another run holds the lock, a clean stop on SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from cronsim import CronSim

from monitoring import lock
from pipelines.schedule import print_status
from riskloop import cron
from riskloop.errors import LockHeld, SettingsError
from riskloop.settings import load_params
from serving.store import job_locks, make_engine, now_utc, scheduled_runs, upgrade
from tests.conftest import ROOT

HOURLY = "0 * * * *"
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
RISKLOOP = str(Path(sys.executable).with_name("riskloop"))


def forward(expr: str, after: datetime, until: datetime) -> list[datetime]:
    """Every due time in (after, until], walked forward: the reference `plan` must agree with."""
    out = []
    for at in CronSim(expr, after):
        if at > until:
            return out
        out.append(at)
    return out


# ---------------------------------------------------------------- plan (pure)


def test_nothing_due_between_two_due_times():
    assert cron.plan(HOURLY, T0, T0 + timedelta(minutes=59, seconds=59)) == (None, [])


def test_one_due_time_passed_runs_it_and_misses_nothing():
    due, missed = cron.plan(HOURLY, T0, T0 + timedelta(hours=1, minutes=3))
    assert (due, missed) == (T0 + timedelta(hours=1), [])
    # a due time is due from its very second
    assert cron.plan(HOURLY, T0, T0 + timedelta(hours=1)) == (T0 + timedelta(hours=1), [])


def test_five_passed_hourly_runs_the_latest_once_and_reports_four_missed():
    now = T0 + timedelta(hours=5, minutes=20)
    due, missed = cron.plan(HOURLY, T0, now)
    passed = forward(HOURLY, T0, now)
    assert len(passed) == 5
    assert due == passed[-1] == T0 + timedelta(hours=5)
    assert missed == passed[:-1] == [T0 + timedelta(hours=h) for h in (1, 2, 3, 4)]
    # after that run nothing is due until the next hour: no backlog run back to back
    assert cron.plan(HOURLY, due, now) == (None, [])


@pytest.mark.parametrize("expr", [HOURLY, "*/15 * * * *", "30 2 * * *", "0 9 * * 1-5",
                                  "5 */6 1,15 * *", "@daily"])  # fmt: skip
@pytest.mark.parametrize("gap_hours", [0.1, 1, 7, 50, 400])
def test_plan_agrees_with_walking_forward(expr, gap_hours):
    last = datetime(2026, 2, 27, 23, 17, 3, tzinfo=UTC)
    now = last + timedelta(hours=gap_hours)
    passed = forward(cron.expand(expr), last, now)
    due, missed = cron.plan(expr, last, now)
    assert due == (passed[-1] if passed else None)
    assert missed == passed[:-1][-cron.MAX_MISSED :]  # the newest, when more were missed


def test_without_history_the_latest_due_time_runs_and_none_is_missed():
    assert cron.plan(HOURLY, None, T0 + timedelta(minutes=37)) == (T0, [])


def test_missed_list_is_capped_at_the_newest():
    now = T0 + timedelta(days=30)
    due, missed = cron.plan("* * * * *", T0, now, max_missed=10)
    assert due == now
    assert missed == [now - timedelta(minutes=m) for m in range(10, 0, -1)]


def test_schedules_are_utc_without_dst_jumps():
    # 2026-03-29 (EU) and 2026-03-08 (US) move local clocks; a UTC schedule fires every 24 h
    times = forward(
        "30 2 * * *", datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)
    )
    assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(days=1)}
    assert all((t.hour, t.minute, t.tzinfo) == (2, 30, UTC) for t in times)
    # an aware time elsewhere means the same instant; a naive one is refused
    cet = timezone(timedelta(hours=1))
    assert cron.plan(HOURLY, T0, datetime(2026, 3, 1, 12, 5, tzinfo=cet)) == (
        T0 + timedelta(hours=1), [])  # fmt: skip
    with pytest.raises(ValueError, match="naive"):
        cron.plan(HOURLY, T0, datetime(2026, 3, 1, 12, 5))
    assert cron.next_due(HOURLY, T0) == T0 + timedelta(hours=1)


def _params_with_schedule(tmp_path: Path, value: object) -> Path:
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["monitoring"]["schedule"] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(("value", "why"), [
    ("61 * * * *", "minute"), ("0 25 * * *", "hour"), ("0 * * *", "4 field"),
    ("0 0 * * * *", "6 field"), ("0 0 30 2 *", "day-of-month"), ("every hour", "field"),
])  # fmt: skip
def test_a_bad_cron_is_rejected_at_load_naming_the_key(tmp_path, value, why):
    with pytest.raises(SettingsError) as info:
        load_params(_params_with_schedule(tmp_path, value))
    assert "monitoring.schedule" in str(info.value) and why in str(info.value)


def test_the_repository_schedule_and_macros_load(tmp_path, params):
    assert cron.check(params.monitoring.schedule) == params.monitoring.schedule
    assert load_params(_params_with_schedule(tmp_path, "@hourly")).monitoring.schedule == HOURLY


# ---------------------------------------------------------------- the lock, on both stores


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store' / 'predictions.db'}"
    else:
        url = request.getfixturevalue("pg_db")()
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_one_holder_at_a_time_release_frees_it(engine):
    assert lock.acquire(engine, "job", "a", 60)
    assert not lock.acquire(engine, "job", "b", 60)
    assert lock.current(engine, "job")["holder"] == "a"
    assert not lock.release(engine, "job", "b")  # not b's to free
    assert not lock.acquire(engine, "job", "b", 60)
    assert lock.release(engine, "job", "a")
    assert lock.current(engine, "job") is None
    assert lock.acquire(engine, "job", "b", 60)
    assert lock.acquire(engine, "other", "a", 60)  # another job's lock is another lease


def test_an_expired_lease_is_taken_over_a_live_one_is_not(engine):
    assert lock.acquire(engine, "job", "a", 10, now=T0)
    assert lock.acquire(engine, "job", "a", 10, now=T0 + timedelta(seconds=5))  # its own: renewed
    assert lock.current(engine, "job")["acquired_at"] == T0  # ... keeping its `since`
    assert not lock.acquire(engine, "job", "b", 10, now=T0 + timedelta(seconds=14))
    assert lock.acquire(engine, "job", "b", 10, now=T0 + timedelta(seconds=15))
    taken = lock.current(engine, "job")
    assert (taken["holder"], taken["acquired_at"]) == ("b", T0 + timedelta(seconds=15))
    assert not lock.renew(engine, "job", "a", 10)  # a learns it lost the lease
    assert not lock.release(engine, "job", "a")
    assert lock.current(engine, "job")["holder"] == "b"


def test_racing_threads_exactly_one_wins(engine):
    for round_ in range(5):
        n = 8
        barrier, wins = threading.Barrier(n), []

        def contend(i: int, barrier=barrier, wins=wins, round_=round_) -> None:
            barrier.wait()
            if lock.acquire(engine, "job", f"t{round_}-{i}", 60):
                wins.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1, wins
        assert lock.current(engine, "job")["holder"] == f"t{round_}-{wins[0]}"
        assert lock.release(engine, "job", f"t{round_}-{wins[0]}")


RACER = """
import os, sys, time
from monitoring import lock
from serving.store import make_engine
engine = make_engine(sys.argv[1])
with engine.connect():  # connected before the start: the race is the acquire, not start-up
    pass
open(sys.argv[2] + "." + sys.argv[3], "w").close()
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
print(lock.acquire(engine, "job", sys.argv[3], 60))
"""


def test_racing_processes_exactly_one_wins(db_url, tmp_path):
    go, n = tmp_path / "go", 4
    procs = [subprocess.Popen([sys.executable, "-c", RACER, db_url, str(go), f"p{i}"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True) for i in range(n)]  # fmt: skip
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("go.p*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # all at once
    results = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(results) == ["False"] * (n - 1) + ["True"], results


def test_heartbeat_keeps_the_lease_beyond_its_ttl(engine):
    ttl = 0.4
    with lock.held(engine, "job", ttl) as beat:
        holder = lock.current(engine, "job")["holder"]
        time.sleep(ttl * 4)
        assert not lock.acquire(engine, "job", "intruder", ttl)
        assert lock.current(engine, "job")["holder"] == holder and not beat.lost
    assert lock.current(engine, "job") is None  # released on exit
    # the control: the same wait without a heartbeat loses the lease
    assert lock.acquire(engine, "job", "quiet", ttl)
    time.sleep(ttl * 2)
    assert lock.acquire(engine, "job", "intruder", ttl)


def test_held_names_the_holder_and_since_when(engine):
    assert lock.acquire(engine, "monitor", "host-a:42:beef", 60, now=now_utc())
    since = lock.current(engine, "monitor")["acquired_at"]
    with pytest.raises(LockHeld) as info, lock.held(engine, "monitor", 60):
        pytest.fail("the block must not run while another holds the lock")
    assert str(info.value) == (f"another monitor run holds the lock (holder host-a:42:beef, "
                               f"since {since.isoformat(timespec='seconds')})")  # fmt: skip


def test_a_child_of_the_holder_joins_its_lease_and_leaves_it_held(engine, monkeypatch):
    assert lock.acquire(engine, "monitor", "parent", 60)
    monkeypatch.setenv(lock.HOLDER_ENV, "other-job=parent")  # another job's lease: not joined
    with pytest.raises(LockHeld):
        lock.held(engine, "monitor", 60).__enter__()
    monkeypatch.setenv(lock.HOLDER_ENV, "monitor=parent")
    with lock.held(engine, "monitor", 60):
        assert lock.current(engine, "monitor")["holder"] == "parent"
    assert lock.current(engine, "monitor")["holder"] == "parent"  # the parent releases it


# ---------------------------------------------------------------- the scheduler, for real

# The job: appends the lease it was given to a file, or waits for a file first.
JOB = """
import os, sys, time
log, wait = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
with open(log, "a") as f:
    f.write(os.environ.get("RISKLOOP_LOCK_HOLDER", "-") + "\\n")
while wait and not os.path.exists(wait):
    time.sleep(0.05)
"""


def job(tmp_path: Path, *args: str) -> list[str]:
    return ["--", sys.executable, "-c", JOB, str(tmp_path / "runs.log"), *args]


def wait_for_job(tmp_path: Path) -> str:
    """The first run's line, once the job has started."""
    deadline = time.monotonic() + 30
    while not job_runs(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return job_runs(tmp_path)[0]


def job_runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs.log"
    return path.read_text().splitlines() if path.exists() else []


def scheduler_env(db_url: str, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": db_url, "RISKLOOP_STATE_DIR": str(tmp_path / "state")}
    env.pop(lock.HOLDER_ENV, None)
    return env


def schedule(db_url: str, tmp_path: Path, *args: str, timeout: float = 60):
    return subprocess.run([RISKLOOP, "schedule", *args], cwd=ROOT, capture_output=True,
                          text=True, env=scheduler_env(db_url, tmp_path), timeout=timeout)  # fmt: skip


def runs(engine: sa.Engine) -> list[dict]:
    query = sa.select(scheduled_runs).order_by(scheduled_runs.c.due_at, scheduled_runs.c.id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def due_times(rows: list[dict], status: str) -> list[datetime]:
    return [r["due_at"].replace(tzinfo=UTC) if r["due_at"].tzinfo is None else r["due_at"]
            for r in rows if r["status"] == status]  # fmt: skip


def clear_of_a_due_time(expr: str, margin_s: float = 60) -> None:
    """Wait past the next due time when it is less than `margin_s` away: a test that counts
    due times must not see one arrive while it runs (CI once ran one at 14:00:0x)."""
    upcoming = next(iter(CronSim(expr, now_utc())))
    wait = (upcoming - now_utc()).total_seconds()
    if wait < margin_s:
        time.sleep(max(wait, 0) + 1)


def last_due_three_hours_ago(engine: sa.Engine, expr: str) -> datetime:
    """Store a run for the latest due time three hours ago: the scheduler's history."""
    clear_of_a_due_time(expr)
    last, _ = cron.plan(expr, None, now_utc() - timedelta(hours=3))
    with engine.begin() as conn:
        conn.execute(sa.insert(scheduled_runs).values(
            job="monitor", due_at=last, started_at=last, finished_at=last, status="ok", exit_code=0))  # fmt: skip
    return last


def test_once_runs_the_latest_due_time_once_and_records_the_others_missed(
    db_url, engine, tmp_path, params, capsys
):
    expr = params.monitoring.schedule
    last = last_due_three_hours_ago(engine, expr)
    before = cron.plan(expr, last, now_utc())
    proc = schedule(db_url, tmp_path, "--once", *job(tmp_path))
    after = cron.plan(expr, last, now_utc())
    assert proc.returncode == 0, proc.stderr
    due, missed = before if due_times(runs(engine), "ok")[-1] == before[0] else after
    assert len(missed) == len(forward(expr, last, now_utc())) - 1
    if expr == HOURLY:
        assert len(missed) == 2  # three hours ago: two missed, one run for the third
    rows = runs(engine)
    assert due_times(rows, "missed") == missed
    assert due_times(rows, "ok") == [last, due]
    assert len(job_runs(tmp_path)) == 1  # exactly one run, not one per due time
    assert job_runs(tmp_path)[0].startswith("monitor=")  # under the scheduler's lease
    assert "missed 2 due time(s)" in proc.stderr and "due " in proc.stderr
    assert lock.current(engine, "monitor") is None  # released
    # asked again at once: nothing is due, nothing runs twice
    again = schedule(db_url, tmp_path, "--once", *job(tmp_path))
    assert again.returncode == 0 and "nothing due" in again.stderr, again.stderr
    assert len(job_runs(tmp_path)) == 1 and len(runs(engine)) == len(rows)
    print_status(engine, expr, "monitor", 3)
    shown = capsys.readouterr().out
    assert shown.count(" ok ") == 1 and shown.count(" missed ") == 2 and "lock: free" in shown


def test_once_while_another_run_holds_the_lock_records_locked_and_runs_nothing(
    db_url, engine, tmp_path, params
):
    expr = params.monitoring.schedule
    last = last_due_three_hours_ago(engine, expr)
    # a manual `riskloop monitor` (or a CronJob's) is running
    assert lock.acquire(engine, "monitor", "manual-run", 600)
    proc = schedule(db_url, tmp_path, "--once", *job(tmp_path))
    assert proc.returncode == lock.EXIT_LOCKED, proc.stderr
    assert job_runs(tmp_path) == []
    rows = runs(engine)
    (locked,) = [r for r in rows if r["status"] == "locked"]
    assert "another monitor run holds the lock (holder manual-run, since" in locked["detail"]
    assert locked["exit_code"] is None and locked["started_at"] is None
    assert len(due_times(rows, "missed")) == len(cron.plan(expr, last, now_utc())[1])
    assert lock.current(engine, "monitor")["holder"] == "manual-run"  # not taken, not freed


def test_two_schedulers_at_once_run_the_job_once(tmp_path, params):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    upgrade(url)
    go = tmp_path / "go"
    env = scheduler_env(url, tmp_path)
    procs = [subprocess.Popen([RISKLOOP, "schedule", "--once", *job(tmp_path, str(go))], cwd=ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    wait_for_job(tmp_path)
    time.sleep(1.0)  # the other scheduler has had its go meanwhile
    go.touch()
    codes = sorted(p.wait(timeout=30) for p in procs)
    assert len(job_runs(tmp_path)) == 1, [p.stderr.read() for p in procs]
    assert codes in ([0, 0], [0, lock.EXIT_LOCKED])
    engine = make_engine(url)
    try:
        assert [r["status"] for r in runs(engine)] in (["ok"], ["ok", "locked"])
    finally:
        engine.dispose()


def test_the_real_monitor_joins_the_schedulers_lease_and_refuses_a_manual_run(tmp_path):
    """`riskloop monitor` itself, twice at once (its imports take seconds): as the scheduler's
    default job it joins the scheduler's lease instead of finding it held (on an empty store it
    runs and takes no decision: exit 2); run by hand while a scheduled job holds the lock, it
    exits 75 with one line naming the holder."""
    joined, busy = tmp_path / "joined", tmp_path / "busy"
    work = joined / "work"
    work.mkdir(parents=True)
    busy.mkdir()
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    joined_url = f"sqlite:///{joined / 'predictions.db'}"
    busy_url = f"sqlite:///{busy / 'predictions.db'}"
    upgrade(busy_url)
    default = subprocess.Popen([RISKLOOP, "schedule", "--once"], cwd=work, text=True,
                               env=scheduler_env(joined_url, joined), stderr=subprocess.PIPE)  # fmt: skip
    go = busy / "go"
    sched = subprocess.Popen([RISKLOOP, "schedule", "--once", *job(busy, str(go))], cwd=ROOT,
                             env=scheduler_env(busy_url, busy), stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        holder = wait_for_job(busy).partition("=")[2]
        manual = subprocess.run([RISKLOOP, "monitor", "--no-act"], cwd=ROOT, capture_output=True,
                                env=scheduler_env(busy_url, busy), text=True, timeout=120)  # fmt: skip
    finally:
        go.touch()
        sched.wait(timeout=30)
    assert manual.returncode == lock.EXIT_LOCKED, manual.stderr
    lines = manual.stderr.strip().splitlines()
    assert lines == [f"another monitor run holds the lock (holder {holder}, since "
                     f"{lines[0].rsplit('since ', 1)[-1]}"], lines  # fmt: skip
    assert sched.returncode == 0, sched.stderr.read()

    assert default.wait(timeout=120) == 2, default.stderr.read()  # "no decision", not 75
    engine = make_engine(joined_url)
    try:
        (row,) = runs(engine)
        assert (row["status"], row["exit_code"]) == ("failed", 2)
        assert row["detail"].startswith("no decision:"), row["detail"]
        with engine.connect() as conn:
            assert conn.execute(sa.select(job_locks)).all() == []
            decided = conn.execute(sa.text("SELECT count(*) FROM monitoring_runs")).scalar_one()
        assert decided == 1  # the monitor did run
    finally:
        engine.dispose()


def test_the_long_running_scheduler_fires_once_then_waits_and_stops_on_sigterm(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    upgrade(url)
    sched = subprocess.Popen([RISKLOOP, "schedule", *job(tmp_path)], cwd=ROOT, text=True,
                             env=scheduler_env(url, tmp_path), stderr=subprocess.PIPE)  # fmt: skip
    wait_for_job(tmp_path)
    time.sleep(1.0)  # the due time ran: no second run before the next one
    sched.send_signal(signal.SIGTERM)
    assert sched.wait(timeout=15) == 0
    err = sched.stderr.read()
    assert len(job_runs(tmp_path)) == 1, err
    assert ": ok exit 0 in " in err and "next due" in err and "stopped" in err


def test_sigterm_stops_the_running_job_records_it_and_exits_0(tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    upgrade(url)
    never = tmp_path / "never"  # the job waits for this file forever
    sched = subprocess.Popen([RISKLOOP, "schedule", *job(tmp_path, str(never))], cwd=ROOT,
                             text=True, env=scheduler_env(url, tmp_path), stderr=subprocess.PIPE)  # fmt: skip
    wait_for_job(tmp_path)
    sched.send_signal(signal.SIGTERM)
    assert sched.wait(timeout=15) == 0, sched.stderr.read()
    engine = make_engine(url)
    try:
        (row,) = runs(engine)
        assert row["status"] == "failed" and row["exit_code"] == -signal.SIGTERM
        assert row["detail"] == "stopped: the scheduler was asked to stop"
        assert lock.current(engine, "monitor") is None
    finally:
        engine.dispose()
