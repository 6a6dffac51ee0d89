"""Schedule math: cron in a time zone (DST included), intervals, missed fire times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from k1.scheduling.timing import Cron, describe, due_points, interval, parse_cron, upcoming
from k1.settings import Settings, SettingsError

PARIS = ZoneInfo("Europe/Paris")


def test_cron_fires_in_its_own_time_zone() -> None:
    cron = Cron("0 9 * * *", "Asia/Tokyo")
    after = datetime(2026, 1, 10, 0, 30, tzinfo=UTC)  # 09:30 in Tokyo
    assert cron.next_after(after) == datetime(2026, 1, 11, 0, 0, tzinfo=UTC)


def test_a_wall_clock_time_repeated_when_dst_ends_fires_once() -> None:
    cron = Cron("30 2 * * *", "Europe/Paris")
    first = cron.next_after(datetime(2025, 10, 25, 12, tzinfo=PARIS))
    assert first.isoformat() == "2025-10-26T02:30:00+02:00"
    assert cron.next_after(first).isoformat() == "2025-10-27T02:30:00+01:00"


def test_a_wall_clock_time_skipped_when_dst_starts_fires_after_the_gap() -> None:
    cron = Cron("30 2 * * *", "Europe/Paris")
    fire = cron.next_after(datetime(2025, 3, 29, 12, tzinfo=PARIS))
    assert fire.isoformat() == "2025-03-30T03:00:00+02:00"


def test_day_of_month_or_day_of_week_as_in_cron() -> None:
    cron = Cron("0 0 1 * 1")  # the 1st, and every Monday
    fire = cron.next_after(datetime(2026, 6, 2, tzinfo=UTC))  # a Tuesday
    assert fire == datetime(2026, 6, 8, tzinfo=UTC)  # the next Monday, before July 1st


def test_missed_fire_times_are_counted_with_the_latest() -> None:
    last = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = last + timedelta(minutes=31, seconds=5)
    due = due_points(Cron("*/5 * * * *"), last, now)
    assert (due.count, due.latest) == (6, last + timedelta(minutes=30))
    due = due_points(interval(2), last, last + timedelta(seconds=9))
    assert (due.count, due.latest) == (4, last + timedelta(seconds=8))


def test_upcoming_fire_times_follow_the_grid_even_when_overdue() -> None:
    last = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    times = upcoming(interval(10), last, last + timedelta(seconds=25), 3, "America/New_York")
    assert [t.isoformat() for t in times] == [
        "2026-01-01T07:00:30-05:00", "2026-01-01T07:00:40-05:00", "2026-01-01T07:00:50-05:00"]


@pytest.mark.parametrize(("expr", "problem"), [
    ("* * * *", "expected 5 fields"),
    ("* * * * * *", "expected 5 fields"),
    ("61 * * * *", "out of range"),
    ("0 0 31 2 *", "next date"),
])
def test_bad_cron_expressions_say_why(expr: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_cron(expr)


def test_descriptions_read_well() -> None:
    assert describe(Cron("*/15 * * * *", "UTC")) == "Every 15 minutes (UTC)"
    assert describe(interval(30)) == "Every 30 seconds"
    assert describe(interval(3600)) == "Every hour"
    assert describe(interval(7200)) == "Every 2 hours"


def test_beat_timing_settings_are_checked() -> None:
    env = {"K1_SECRET_KEY": "k" * 40}
    defaults = Settings.from_env(env)
    assert (defaults.beat_max_loop_interval, defaults.beat_lock_timeout) == (1, 10)
    tuned = Settings.from_env({**env, "K1_BEAT_MAX_LOOP_INTERVAL": "2",
                               "K1_BEAT_LOCK_TIMEOUT": "8"})
    assert (tuned.beat_max_loop_interval, tuned.beat_lock_timeout) == (2, 8)
    with pytest.raises(SettingsError, match="K1_BEAT_LOCK_TIMEOUT: must be at least 3 x"):
        Settings.from_env({**env, "K1_BEAT_MAX_LOOP_INTERVAL": "5", "K1_BEAT_LOCK_TIMEOUT": "10"})
    with pytest.raises(SettingsError, match="K1_BEAT_MAX_LOOP_INTERVAL: must be between 1 and"):
        Settings.from_env({**env, "K1_BEAT_MAX_LOOP_INTERVAL": "0"})
