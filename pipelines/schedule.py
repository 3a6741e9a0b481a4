"""`make schedule`: run the monitoring job at each due time of monitoring.schedule (a cron
expression in UTC, hourly by default), one run at a time, until SIGTERM.

    riskloop schedule                  run until SIGTERM or Ctrl-C (a running job is stopped)
    riskloop schedule --once           run what is due now, if anything, then exit: what a
                                       system cron or a Kubernetes CronJob calls
    riskloop schedule --status [N]     the last N due times and what became of them
    riskloop schedule [...] -- CMD...  run CMD instead of `riskloop monitor --act`

The job runs as a subprocess, so its crash never stops the scheduler. Every due time gets one
row in the prediction store's scheduled_runs: ok or failed (with the exit code and the job's
last stderr line), missed, or locked. Waking after several due times passed (the scheduler was
down, or a run overran), it runs once, for the latest, and records the earlier ones as missed:
never a backlog run back to back. The last due time is read from the store, so a restarted
scheduler carries on where the last one stopped; with no history the latest due time runs.

One run at a time: the job runs under the `monitor` lock in the store, which `riskloop monitor`
takes itself, so a manual run, a CronJob and the scheduler never overlap. A due time that finds
the lock held is recorded as locked, naming the holder, and not run.

Exit codes of --once: 0 nothing was due or the job succeeded; the job's own code when it
failed; 75 another run held the lock."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import sqlalchemy as sa

from monitoring import lock, records
from riskloop import cron
from riskloop.cli import run_main
from riskloop.errors import RiskloopError
from riskloop.settings import load_params
from serving.config import ServingEnv
from serving.store import now_utc

log = logging.getLogger("schedule")
JOB = lock.MONITOR
STOP_GRACE_S = 20.0  # a stopped job's time to exit before SIGKILL (Kubernetes grants 30 s)
RETRY_S = 60.0  # a fire the store could not take is tried again this much later
POLL_S = 0.5  # how often a running job's wait looks at the stop flag


def default_command() -> list[str]:
    """`riskloop monitor --act`, with the riskloop of this environment; `python -m riskloop`
    where no console script is installed (the compose jobs image runs a mounted working copy)."""
    exe = Path(sys.executable).with_name("riskloop")
    return [
        *([str(exe)] if exe.exists() else [sys.executable, "-m", "riskloop"]),
        "monitor",
        "--act",
    ]


def status_of(exit_code: int) -> str:
    if exit_code == 0:
        return "ok"
    return "locked" if exit_code == lock.EXIT_LOCKED else "failed"


def _at(t: datetime | None) -> str:
    return "-" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Fire:
    """What one due time became."""

    due: datetime
    status: str  # ok | failed | locked
    exit_code: int | None  # None: the job did not run
    seconds: float
    detail: str | None


class _StderrTail(threading.Thread):
    """Copies the job's stderr to ours line by line and keeps its last line: why it failed."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(name="job-stderr", daemon=True)
        self.stream, self.last = stream, ""

    def run(self) -> None:
        for line in self.stream:
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.strip():
                self.last = line.strip()


class Scheduler:
    """Fires `command` at the due times of `cron_expr`, one run at a time, recording each due
    time in scheduled_runs under the name `job` (also the lock's name)."""

    def __init__(self, engine: sa.Engine, cron_expr: str, command: Sequence[str],
                 job: str = JOB, ttl_s: float = lock.TTL_S) -> None:  # fmt: skip
        self.engine, self.cron, self.command = engine, cron.check(cron_expr), list(command)
        self.job, self.ttl_s = job, ttl_s
        self.stopping = threading.Event()

    def stop_on_signals(self) -> None:
        """SIGTERM and SIGINT stop the scheduler: a running job is stopped, then it exits."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())

    def fire(self, now: datetime) -> Fire | None:
        """Run what is due at `now`, if anything (None: nothing is)."""
        holder = lock.new_holder()
        # Lock, plan and claim in one transaction: a scheduler racing this one waits on its
        # write to job_locks, then reads its claim, so a due time is never run twice and never
        # recorded locked by a scheduler that read the schedule before this one claimed it.
        with self.engine.begin() as conn:
            got = lock.acquire(conn, self.job, holder, self.ttl_s)
            if got:
                records.abandon_running(conn, self.job)
            due, missed = cron.plan(self.cron, records.last_due(conn, self.job), now)
            records.record_missed(conn, self.job, missed, "passed while the scheduler was down "
                                  f"or a run overran; one run for {_at(due)} instead")  # fmt: skip
            run_id, busy = None, None
            if due is not None and got:
                run_id = records.claim_due(conn, self.job, due, "running")
            elif due is not None:
                busy = str(lock.held_error(self.job, lock.current(conn, self.job)))
                records.claim_due(conn, self.job, due, "locked", busy)
        if missed:
            log.warning("missed %d due time(s), recorded as missed: %s", len(missed),
                        ", ".join(map(_at, missed)))  # fmt: skip
        if not got:
            return None if due is None else self._report(Fire(due, "locked", None, 0.0, busy))
        try:
            if due is None or run_id is None:
                return None
            started = time.monotonic()
            with lock.Heartbeat(self.engine, self.job, holder, self.ttl_s):
                code, detail = self._run(holder)
            fire = Fire(due, status_of(code), code, time.monotonic() - started, detail)
            records.finish_run(self.engine, run_id, fire.status, code, detail)
            return self._report(fire)
        finally:
            lock.release(self.engine, self.job, holder)

    def _run(self, holder: str) -> tuple[int, str | None]:
        """Run the job to its end (or until the scheduler stops): (exit code, why it failed)."""
        env = {**os.environ, **lock.child_env(self.job, holder)}
        try:
            # its own session: a Ctrl-C in the terminal reaches the scheduler, which stops the
            # job's whole process group (a retrain's dvc and its children) itself
            proc = subprocess.Popen(self.command, env=env, stderr=subprocess.PIPE, text=True,
                                    errors="replace", start_new_session=True)  # fmt: skip
        except OSError as exc:
            return 127, f"could not start {self.command[0]}: {exc}"
        assert proc.stderr is not None
        tail = _StderrTail(proc.stderr)
        tail.start()
        deadline = None
        while True:
            try:
                code = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set() and deadline is None:
                log.info("stopping the running job (SIGTERM; SIGKILL after %.0fs)", STOP_GRACE_S)
                _signal_group(proc, signal.SIGTERM)
                deadline = time.monotonic() + STOP_GRACE_S
            elif deadline is not None and time.monotonic() > deadline:
                _signal_group(proc, signal.SIGKILL)
        tail.join(timeout=5)
        if deadline is not None:
            return code, "stopped: the scheduler was asked to stop"
        return code, None if code == 0 else (tail.last or None)

    def _report(self, fire: Fire) -> Fire:
        following = cron.next_due(self.cron, fire.due)
        late = " (passed during this run)" if following <= now_utc() else ""
        code = "" if fire.exit_code is None else f" exit {fire.exit_code}"
        why = f": {fire.detail}" if fire.detail else ""
        log.info("due %s: %s%s in %.1fs%s; next due %s%s", _at(fire.due), fire.status, code,
                 fire.seconds, why, _at(following), late)  # fmt: skip
        return fire

    def once(self) -> int:
        """Fire what is due now; the process's exit code."""
        fire = self.fire(now_utc())
        if fire is None:
            log.info("nothing due; next due %s", _at(cron.next_due(self.cron, now_utc())))
            return 0
        if fire.status == "locked":
            return lock.EXIT_LOCKED
        if self.stopping.is_set() or not fire.exit_code:
            return 0
        # a job killed by a signal: the shell's 128 + N, not a negative status
        return fire.exit_code if fire.exit_code > 0 else 128 - fire.exit_code

    def forever(self) -> int:
        """Fire at every due time until stopped; 0."""
        log.info("running %s at %r (UTC); SIGTERM or Ctrl-C stops", " ".join(self.command),
                 self.cron)  # fmt: skip
        while not self.stopping.is_set():
            now = now_utc()
            try:
                self.fire(now)
                wake = cron.next_due(self.cron, now)
            except (sa.exc.SQLAlchemyError, RiskloopError) as exc:
                # the due time stays unclaimed: the next try runs it (or reports it missed)
                log.error("could not fire: %s; trying again in %.0fs", exc, RETRY_S)
                wake = now + timedelta(seconds=RETRY_S)
            # short waits, against the wall clock: a suspended machine or a clock step wakes
            # at the right time, and a stop is seen at once (signals interrupt the wait)
            while not self.stopping.is_set() and (left := (wake - now_utc()).total_seconds()) > 0:
                self.stopping.wait(min(left, 60.0))
        log.info("stopped")
        return 0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile
        os.killpg(proc.pid, sig)


def print_status(engine: sa.Engine, cron_expr: str, job: str, limit: int) -> None:
    """The schedule, the next due time, the lock and the last `limit` due times."""
    print(f"schedule: {cron_expr} (UTC); next due {_at(cron.next_due(cron_expr, now_utc()))}")
    lease = lock.current(engine, job)
    if lease is not None and lease["expires_at"] > now_utc():
        print(f"lock: held by {lease['holder']} since {_at(lease['acquired_at'])}")
    else:
        print("lock: free")
    rows = records.recent_runs(engine, job, limit)
    if not rows:
        print("no scheduled runs yet")
        return
    print(f"{'due':<21}{'status':<9}{'exit':>5}  {'started':<21}{'seconds':>8}  detail")
    for r in rows:
        took = (f"{(r['finished_at'] - r['started_at']).total_seconds():.1f}"
                if r["started_at"] and r["finished_at"] else "-")  # fmt: skip
        code = "-" if r["exit_code"] is None else str(r["exit_code"])
        print(f"{_at(r['due_at']):<21}{r['status']:<9}{code:>5}  {_at(r['started_at']):<21}"
              f"{took:>8}  {r['detail'] or ''}")  # fmt: skip


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    own, command = argv[:split], argv[split + 1 :]
    ap = argparse.ArgumentParser(
        usage="%(prog)s [-h] [--once | --status [N]] [-- CMD [ARG ...]]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--once", action="store_true",
                      help="run what is due now, if anything, then exit")  # fmt: skip
    what.add_argument("--status", nargs="?", type=int, const=20, metavar="N",
                    help="print the last N (default 20) due times and what became of them")  # fmt: skip
    args = ap.parse_args(own)
    if "--" in argv and not command:
        ap.error("nothing after `--`: name the job's command")
    if args.status is not None and args.status < 1:
        ap.error(f"--status {args.status}: must be at least 1")
    expr = load_params().monitoring.schedule
    engine = records.open_store(ServingEnv().store_url())
    try:
        if args.status is not None:
            print_status(engine, expr, JOB, args.status)
            return
        scheduler = Scheduler(engine, expr, command or default_command())
        scheduler.stop_on_signals()
        code = scheduler.once() if args.once else scheduler.forever()
    finally:
        engine.dispose()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_main(main)
