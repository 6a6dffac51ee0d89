"""Real ``k1 beat`` processes: one active beat, hand-over, downtime and catch-up, and
the supervisor that restarts a beat which lost its lock."""

from __future__ import annotations

import itertools
import os
import time

import pytest
import redis

from tests.scheduling.conftest import HANDOVER_BOUND, LOCK_TIMEOUT, fires, wait_fires
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("worker")

LOCK_KEY = "k1:redbeat::lock"  # RedBeat: redbeat_key_prefix + ':lock'


def client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)


def roles(a, b):
    """(active, standby) of two beats, once one has taken the lock."""
    active = wait_for(lambda: (a if a.acquisitions() else b if b.acquisitions() else None),
                      timeout=30, message="neither beat took the lock")
    return active, (b if active is a else a)


def test_two_beats_fire_each_due_time_once(beats, schedules) -> None:
    a, b = beats("a"), beats("b")
    name = schedules(every=2)["name"]
    wait_for(lambda: a.acquisitions() + b.acquisitions() >= 1, timeout=30,
             message="neither beat took the lock")
    seen = wait_fires(name, 5, timeout=30)
    assert a.acquisitions() + b.acquisitions() == 1  # the other one waits for the lock
    due = [f["due_at"] for f in seen]
    assert len(set(due)) == len(due), seen
    gaps = [later - earlier for earlier, later in itertools.pairwise(due)]
    assert all(abs(gap - 2) < 0.01 for gap in gaps), gaps  # one fire per due time, on the grid
    assert all(f["task_id"] for f in seen)


def test_killing_the_active_beat_hands_over_within_the_bound(beats, schedules) -> None:
    a, b = beats("a"), beats("b")
    name = schedules(every=1)["name"]
    active, standby = roles(a, b)
    wait_fires(name, 1, timeout=10)

    killed_at = time.time()
    active.kill()  # SIGKILL: no lock release, the lock has to expire
    standby.wait_active(timeout=HANDOVER_BOUND + 5)
    first = wait_for(lambda: [f for f in fires(name) if f["fired_at"] > killed_at],
                     timeout=HANDOVER_BOUND + 5, message="no fire after the hand-over")[0]
    handover = first["fired_at"] - killed_at
    assert handover <= HANDOVER_BOUND, f"took {handover:.1f}s"
    assert handover >= LOCK_TIMEOUT - 2  # the lock held until it expired: no double beat
    assert first["due_count"] >= 2  # the fire times missed meanwhile were counted, once
    wait_fires(name, 2, timeout=10, after=len(fires(name)))  # and it keeps firing


def test_sigterm_releases_the_lock_so_the_standby_takes_over_at_once(
        beats, schedules) -> None:
    """SIGTERM to the active beat's process group (as honcho and a Heroku restart send):
    it exits within seconds and releases its lock, so the standby fires the next due times
    long before the lock would have expired; every due time fires once."""
    lock_timeout = 30  # s: a hand-over that waited for the expiry could not hide
    env = {"K1_BEAT_LOCK_TIMEOUT": str(lock_timeout)}
    a, b = beats("a", **env), beats("b", **env)
    name = schedules(every=1)["name"]
    active, standby = roles(a, b)
    wait_fires(name, 2, timeout=15)

    stopped_at = time.time()
    active.stop()  # SIGTERM to the group; SIGKILL only after 15 s
    stop_took = time.time() - stopped_at
    assert stop_took < 10, f"took {stop_took:.1f}s to exit"
    assert active.process.popen.returncode == 0, active.log()[-2000:]
    assert "Releasing lock" in active.log()
    standby.wait_active(timeout=lock_timeout / 2)
    first = wait_for(lambda: [f for f in fires(name) if f["fired_at"] > stopped_at],
                     timeout=lock_timeout / 2, message="no fire after the hand-over")[0]
    assert first["fired_at"] - stopped_at < lock_timeout / 2
    seen = wait_fires(name, 3, timeout=15, after=len(fires(name)))
    due = [f["due_at"] for f in seen]
    assert due == sorted(set(due)), seen  # no due time fired twice
    for earlier, later in itertools.pairwise(seen):  # none lost: each fire covers the gap
        assert abs(later["due_at"] - earlier["due_at"] - later["due_count"]) < 0.01, seen


def test_downtime_gives_one_fire_with_catch_up_once_and_none_with_skip(
        beats, schedules) -> None:
    from k1.scheduling.entry import schedule_id
    from k1.scheduling.history import DUE_BY_SCHEDULE, ON_TIME_BY_SCHEDULE

    first = beats("first")
    once = schedules("once", every=2, catch_up="once")["name"]
    skip = schedules("skip", every=2, catch_up="skip")["name"]
    first.wait_active()
    wait_fires(once, 1, timeout=15)
    wait_fires(skip, 1, timeout=15)
    first.stop()  # clean stop: the lock is released
    before = {n: len(fires(n)) for n in (once, skip)}
    # The downtime is the scenario, not a wait for something to happen: with no beat
    # running nothing fires, so no event can mark it. Down until four due times of both
    # schedules (every 2 s) have passed since their last fires: the catch-up fire stands
    # for the last of them (on time if the new beat is quick), the three before are missed.
    last_due = max(fires(n)[-1]["due_at"] for n in (once, skip))
    time.sleep(max(0.0, last_due + 4 * 2 + 0.5 - time.time()))

    beats("second").wait_active()
    after_once = wait_fires(once, 2, timeout=15, after=before[once])[before[once]:]
    after_skip = wait_fires(skip, 2, timeout=15, after=before[skip])[before[skip]:]

    catch_up, following = after_once[0], after_once[1]
    assert catch_up["task_id"] and catch_up["due_count"] >= 4  # several missed, one fire
    assert abs(following["due_at"] - catch_up["due_at"] - 2) < 0.01  # one fire, then the grid
    skipped, resumed = after_skip[0], after_skip[1]
    assert skipped["task_id"] is None and skipped["due_count"] >= 4
    assert resumed["task_id"] and resumed["due_count"] == 1
    assert abs(resumed["due_at"] - skipped["due_at"] - 2) < 0.01

    redis_ = client()
    for name in (once, skip):
        due = int(redis_.hget(DUE_BY_SCHEDULE, schedule_id("acme", name)))
        on_time = int(redis_.hget(ON_TIME_BY_SCHEDULE, schedule_id("acme", name)))
        assert due - on_time >= 3, (name, due, on_time)  # missed fires: due, not on time


def test_a_beat_that_loses_its_lock_exits_and_is_restarted(beats, schedules) -> None:
    beat = beats("a")
    name = schedules(every=1)["name"]
    beat.wait_active()
    wait_fires(name, 1, timeout=10)
    redis_ = client()
    redis_.set(LOCK_KEY, "stolen", px=LOCK_TIMEOUT * 1000)  # e.g. a failover lost the lock
    beat.process.wait_until(lambda: "LockNotOwnedError" in beat.log(), 15,
                            "did not notice the lost lock")
    beat.process.wait_until(lambda: "restarting in" in beat.log(), 15, "was not restarted")
    assert beat.process.alive()  # the supervisor outlives its celery beat
    beat.wait_active(timeout=HANDOVER_BOUND + 5, times=2)  # the stolen lock expired
    stolen_until = time.time()
    wait_for(lambda: [f for f in fires(name) if f["fired_at"] > stolen_until], timeout=10,
             message="no fire after the restart")


def burst_schedules(unique: str, count: int, due_in: float) -> tuple[list[str], float]:
    """``count`` hourly schedules of project acme, all due ``due_in`` s from now; their
    names and due time (removed at the end of the test by :func:`remove`)."""
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta

    from k1.celery import app
    from k1.scheduling import ScheduleStore
    from k1.scheduling.entry import K1Entry

    store = ScheduleStore()
    template = store.validate({"name": "burst", "task": "k1.tasks.demo.flaky",
                               "every": 3600, "project_id": "acme"})
    names = [f"burst-{unique}-{i:03d}" for i in range(count)]
    due = datetime.now(UTC) + timedelta(seconds=due_in)
    pipe = client().pipeline(transaction=False)
    for name in names:  # what K1Entry.save does, in one round trip
        entry = K1Entry.from_spec(replace(template, name=name), app,
                                  last_run_at=due - timedelta(hours=1))
        pipe.hset(entry.key, mapping={"definition": entry.definition(),
                                      "meta": entry.encoded_meta()})
        pipe.zadd(app.redbeat_conf.schedule_key, {entry.key: entry.score})
    pipe.execute()
    assert datetime.now(UTC) < due, "writing the schedules took longer than planned"
    return names, due.timestamp()


def remove(names: list[str]) -> None:
    from k1.scheduling.entry import entry_key, schedule_id

    pipe = client().pipeline(transaction=False)
    for name in names:
        pipe.delete(entry_key(schedule_id("acme", name)))
        pipe.zrem("k1:redbeat::schedule", entry_key(schedule_id("acme", name)))
    pipe.execute()


def each_fired_once(names: list[str], due: float, timeout: float) -> list[str]:
    """Wait until every schedule fired; assert once each, at ``due``; the task ids."""
    seen = wait_for(lambda: all(fires(n) for n in names) and [fires(n) for n in names],
                    timeout=timeout, interval=0.5,
                    message=lambda: f"{sum(1 for n in names if fires(n))} of {len(names)} fired")
    assert all(len(f) == 1 for f in seen), [f for f in seen if len(f) != 1][:3]
    assert {f[0]["due_at"] for f in seen} == {due}
    task_ids = [f[0]["task_id"] for f in seen]
    assert all(task_ids) and len(set(task_ids)) == len(names), [t for t in task_ids if not t]
    return task_ids


def test_a_burst_due_at_one_instant_fires_each_schedule_once(beats, unique: str) -> None:
    """More schedules than one batch of the loop (k1.scheduling.beat.BATCH), all due at
    the same instant, two beats running: each fires exactly once, at that due time, and
    its task is recorded."""
    from k1.scheduling.beat import BATCH
    from k1.tasks.submissions import lookup

    a, b = beats("a"), beats("b")
    wait_for(lambda: a.acquisitions() + b.acquisitions() >= 1, timeout=30,
             message="neither beat took the lock")
    names, due = burst_schedules(unique, 2 * BATCH + 50, due_in=5)
    try:
        task_ids = each_fired_once(names, due, timeout=60)
        assert all(lookup(t) is not None and lookup(t).project_id == "acme"
                   for t in task_ids[:: BATCH // 4])  # GET /api/tasks/<id> answers for them
        assert a.acquisitions() + b.acquisitions() == 1  # one active beat throughout
    finally:
        remove(names)


def test_sigterm_in_the_middle_of_a_burst_loses_no_fire(beats, unique: str) -> None:
    """SIGTERM lands while beat sends a burst: what it advanced is still sent (the stop
    waits for the batch), the standby fires the rest, each schedule exactly once."""
    from k1.scheduling.beat import BATCH

    a, b = beats("a"), beats("b")
    active, standby = roles(a, b)
    names, due = burst_schedules(unique, 4 * BATCH, due_in=5)
    try:
        wait_for(lambda: any(fires(n) for n in names), timeout=30, interval=0.02,
                 message="the burst never started")
        active.stop()  # SIGTERM to the group while the burst is being sent
        assert active.process.popen.returncode == 0, active.log()[-2000:]
        standby.wait_active(timeout=HANDOVER_BOUND + 5)
        each_fired_once(names, due, timeout=90)
    finally:
        remove(names)
