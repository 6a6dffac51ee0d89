"""When a schedule fires: a 5-field cron expression in an IANA time zone, or an interval.

    cron = Cron("30 2 * * *", "Europe/Paris")
    cron.next_after(now)                          # aware, in Europe/Paris
    upcoming(cron, last_run_at, now, count=5)     # the next five fire times
    due_points(cron, last_run_at, now)            # Due(count=3, latest=...) after downtime

Celery's ``crontab`` follows the app's time zone, and RedBeat stores it without one
(only its five fields), so a per-schedule zone cannot ride on it. :class:`Cron` is a
Celery schedule of its own on croniter: standard cron semantics (day-of-month *or*
day-of-week, as cron(8) and the cron-descriptor text), evaluated in its zone, where a
wall-clock time that repeats when daylight saving ends fires once, as in cron(8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from celery.schedules import BaseSchedule, schedstate
from celery.schedules import schedule as Interval
from cron_descriptor import get_description
from croniter import croniter

CRON_FIELDS = 5  # minute hour day-of-month month day-of-week; no seconds, no years
MAX_COUNTED_POINTS = 10_000  # due points counted after downtime; a minutely job ~ 7 days
_MAX_REPEATED_WALL_TIMES = 1_000  # candidates skipped in a repeated hour (minutely: 60)


class Cron(BaseSchedule):
    """A Celery schedule firing on the cron expression ``expr`` in ``timezone``."""

    def __init__(self, expr: str, timezone: str = "UTC", nowfun=None, app=None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.expr = " ".join(expr.split())
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)

    @property
    def tz(self) -> tzinfo:
        return self.zone

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment``, in this schedule's zone."""
        start = moment.astimezone(self.zone)
        wall = start.replace(tzinfo=None)
        times = croniter(self.expr, start)
        for _ in range(_MAX_REPEATED_WALL_TIMES):
            candidate = times.get_next(datetime)
            if candidate.replace(tzinfo=None) > wall:  # a repeated wall-clock time fires once
                return candidate
        raise ValueError(f"cron {self.expr!r}: no fire time after {moment.isoformat()}")

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_after(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        remaining = self.remaining_estimate(last_run_at).total_seconds()
        if remaining > 0:
            return schedstate(False, remaining)
        now = self.now()
        return schedstate(True, (self.next_after(now) - now).total_seconds())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Cron):
            return (other.expr, other.timezone) == (self.expr, self.timezone)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.expr, self.timezone))

    def __repr__(self) -> str:
        return f"<Cron {self.expr!r} {self.timezone}>"

    def __reduce__(self):
        return self.__class__, (self.expr, self.timezone)


def parse_cron(expr: str, timezone: str = "UTC") -> Cron:
    """A :class:`Cron` for ``expr``; ValueError saying what is wrong with it."""
    fields = expr.split()
    if len(fields) != CRON_FIELDS:
        raise ValueError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    try:
        cron = Cron(expr, timezone)
        cron.next_after(datetime.now(UTC))
    except (ValueError, KeyError) as exc:  # croniter's errors are ValueErrors
        raise ValueError(str(exc) or type(exc).__name__) from None
    return cron


def interval(seconds: float) -> Interval:
    return Interval(run_every=timedelta(seconds=seconds))


def next_after(timing: Cron | Interval, moment: datetime) -> datetime:
    if isinstance(timing, Cron):
        return timing.next_after(moment)
    return moment + timing.run_every


@dataclass(frozen=True)
class Due:
    """Fire times passed since the last run: how many, and the latest of them."""

    count: int
    latest: datetime


def due_points(timing: Cron | Interval, last_run_at: datetime | None, now: datetime) -> Due:
    """The fire times in ``(last_run_at, now]`` (at least one: call it when due)."""
    if last_run_at is None:
        return Due(1, now)
    if isinstance(timing, Interval):
        every = timing.run_every.total_seconds()
        count = max(1, math.floor((now - last_run_at).total_seconds() / every))
        return Due(count, last_run_at + timedelta(seconds=count * every))
    count, latest = 0, last_run_at
    point = timing.next_after(last_run_at)
    while point <= now and count < MAX_COUNTED_POINTS:
        count, latest = count + 1, point
        point = timing.next_after(point)
    if point <= now:  # counting stopped at the cap: the latest is still the one before now
        latest = datetime.fromtimestamp(
            croniter(timing.expr, now.astimezone(timing.zone)).get_prev(float), timing.zone
        )
    return Due(max(count, 1), latest if count else now)


def upcoming(
    timing: Cron | Interval, last_run_at: datetime | None, now: datetime, count: int, zone: str,
) -> list[datetime]:
    """The next ``count`` fire times in ``zone``: from the last run, or from now if overdue."""
    anchor = last_run_at or now
    point = next_after(timing, anchor)
    if point < now:  # overdue (beat down): the grid continues after now
        if isinstance(timing, Interval):
            every = timing.run_every.total_seconds()
            steps = math.ceil((now - anchor).total_seconds() / every)
            point = anchor + timedelta(seconds=steps * every)
        else:
            point = timing.next_after(now)
    times = [point]
    while len(times) < count:
        times.append(next_after(timing, times[-1]))
    tz = ZoneInfo(zone)
    return [t.astimezone(tz) for t in times]


def describe(timing: Cron | Interval) -> str:
    """A readable sentence: 'At 02:00 AM (Europe/Paris)', 'Every 30 seconds'."""
    if isinstance(timing, Cron):
        return f"{get_description(timing.expr)} ({timing.timezone})"
    return f"Every {_seconds_text(timing.run_every.total_seconds())}"


def _seconds_text(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}s"
    count: float = int(seconds) if seconds == int(seconds) else seconds
    return "second" if count == 1 else f"{count} seconds"
