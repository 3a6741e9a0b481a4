"""Cron expressions in UTC and what is due when: pure functions, no clock and no store. The
settings check an expression with `check`; the scheduler asks `plan` what to run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

# Vixie cron's and Kubernetes' shorthands, so the expression a CronJob takes works here too.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Missed due times listed at most: a scheduler down for months on a minutely schedule must not
# walk (and record) hundreds of thousands of them; beyond this the oldest are not listed.
MAX_MISSED = 1000


def expand(expr: str) -> str:
    """The five-field form of an expression (a macro expanded, whitespace normalized)."""
    text = " ".join(expr.split())
    return MACROS.get(text.lower(), text)


def check(expr: str) -> str:
    """The expression in five-field form, or ValueError saying what is wrong with it."""
    fields = expand(expr).split()
    if len(fields) != 5:
        # cronsim also takes a leading seconds field; crontab and Kubernetes do not
        raise ValueError(
            f"{expr!r} has {len(fields)} field(s); a cron expression has 5: "
            "minute hour day-of-month month day-of-week (or @hourly, @daily, ...)"
        )
    text = " ".join(fields)
    try:
        next(CronSim(text, datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from exc
    except StopIteration:
        raise ValueError(f"{expr!r} never fires") from None
    return text


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"{at} is naive: schedules are in UTC, pass an aware datetime")
    return at.astimezone(UTC)


def next_due(expr: str, after: datetime) -> datetime:
    """The first due time strictly after `after`."""
    return next(CronSim(expand(expr), _utc(after)))


def plan(
    expr: str, last_due: datetime | None, now: datetime, max_missed: int = MAX_MISSED
) -> tuple[datetime | None, list[datetime]]:
    """What to run at `now`: (the latest due time after `last_due` and not after `now`, or None;
    the earlier due times after `last_due`, oldest first). A scheduler that wakes after several
    due times passed (it was down, or a run overran) runs once, for the latest, and reports the
    others as missed: a monitoring run reads the newest window, so a backlog of runs would only
    repeat it. Without a `last_due` (no history) the latest due time is due and none is missed.
    At most `max_missed` missed times are listed, the newest."""
    now = _utc(now).replace(microsecond=0)
    last = _utc(last_due) if last_due is not None else None
    # walk back from now (inclusive): the cost is bounded by what is listed, not by the gap
    back = CronSim(expand(expr), now + timedelta(seconds=1), reverse=True)
    passed: list[datetime] = []
    for at in back:
        if last is None and passed:
            break
        if (last is not None and at <= last) or len(passed) > max_missed:
            break
        passed.append(at)
    if not passed:
        return None, []
    return passed[0], passed[:0:-1]
