"""What happened to each schedule: fires, their punctuality, and the tasks' outcomes.

Beat calls :func:`record_fire` for every due fire (sent, or skipped by ``catch_up:
skip``); the worker's signal handlers below record each scheduled task's outcome. All
of it lands in Redis, keyed by the schedule's id (``<project>:<name>``, or the bare name of
a project-less schedule; :func:`k1.scheduling.entry.schedule_id`):

- the schedule's hash (:mod:`k1.scheduling.entry`): ``last_run_at``, ``last_due_at``,
  ``last_task_id``, then ``last_status`` and ``last_finished_at`` from the worker;
- ``k1:scheduling:fires:<name>``: the last :data:`FIRE_LOG_LENGTH` fires, newest first;
- the "scheduled job uptime" counters (read by :mod:`k1.events.metrics`): totals
  ``k1:metrics:schedule:due`` / ``:on_time`` (INCRBY) and, per schedule, the hashes
  ``k1:metrics:schedule:due:by_schedule`` / ``:on_time:by_schedule``. A fire counts
  as on time when sent within :data:`ON_TIME_TOLERANCE` of its due time; fire times
  missed while beat was down count as due and not on time;
- ``k1:metrics:schedule:drift``: the last :data:`DRIFT_SAMPLES` task start delays
  (task start minus due time, seconds), for the benchmark and the dashboard.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import redis
from celery import Task, signals

from k1 import headers
from k1.connections import get_redis
from k1.events import metrics
from k1.scheduling.entry import entry_key

ON_TIME_TOLERANCE = 2.0  # s: a fire sent later than this after its due time is late
FIRE_LOG_LENGTH = 20  # fires kept per schedule, for GET /api/scheduler/jobs/<name>
DRIFT_SAMPLES = 10_000  # most recent start delays kept

FIRE_LOG_KEY = "k1:scheduling:fires:{}"
DUE_BY_SCHEDULE = "k1:metrics:schedule:due:by_schedule"
ON_TIME_BY_SCHEDULE = "k1:metrics:schedule:on_time:by_schedule"
DRIFT_KEY = "k1:metrics:schedule:drift"

# Everything about one fire in one atomic step, and only while the schedule exists (a
# fire racing a delete must not leave a half-schedule behind).
_RECORD_FIRE = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('incrby', KEYS[2], ARGV[2])
redis.call('incrby', KEYS[3], ARGV[3])
redis.call('hincrby', KEYS[4], ARGV[1], ARGV[2])
redis.call('hincrby', KEYS[5], ARGV[1], ARGV[3])
if ARGV[6] ~= '' then
  redis.call('hset', KEYS[1], 'last_run_at', ARGV[4], 'last_due_at', ARGV[5],
             'last_task_id', ARGV[6])
end
redis.call('lpush', KEYS[6], ARGV[7])
redis.call('ltrim', KEYS[6], 0, tonumber(ARGV[8]) - 1)
return 1
"""
_SET_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV))
return 1
"""


def record_fire(name: str, *, due_count: int, on_time: bool, due_at: float, fired_at: float,
                task_id: str | None, pipe: redis.client.Pipeline | None = None) -> None:
    """Count a fire (``task_id`` None: skipped) and the ``due_count`` due times it serves;
    on ``pipe`` when given (the caller executes it, with the other fires of its loop)."""
    log = json.dumps({"due_at": due_at, "fired_at": fired_at, "task_id": task_id,
                      "due_count": due_count, "on_time": on_time})
    _script(_RECORD_FIRE)(
        keys=[entry_key(name), metrics.SCHEDULE_DUE, metrics.SCHEDULE_ON_TIME,
              DUE_BY_SCHEDULE, ON_TIME_BY_SCHEDULE, FIRE_LOG_KEY.format(name)],
        args=[name, due_count, int(on_time), fired_at, due_at, task_id or "", log,
              FIRE_LOG_LENGTH],
        client=pipe if pipe is not None else get_redis())


@functools.cache
def _script(source: str) -> redis.commands.core.Script:
    """``source`` as a Script (EVALSHA, loaded once), usable on any client or pipeline."""
    return get_redis().register_script(source)


def record_run(name: str, task_id: str) -> None:
    """A run started by hand (run now): history only, no uptime accounting."""
    set_if_exists(name, last_run_at=time.time(), last_task_id=task_id)


def set_if_exists(name: str, **fields: Any) -> bool:
    args = [str(v) for pair in fields.items() for v in pair]
    return bool(get_redis().eval(_SET_IF_EXISTS, 1, entry_key(name), *args))


def recent_fires(name: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in get_redis().lrange(FIRE_LOG_KEY.format(name), 0, -1)]


def uptime(names: list[str]) -> dict[str, tuple[int, int]]:
    """Per schedule: (fires due, fires on time)."""
    if not names:
        return {}
    pipe = get_redis().pipeline(transaction=False)
    pipe.hmget(DUE_BY_SCHEDULE, names)
    pipe.hmget(ON_TIME_BY_SCHEDULE, names)
    due, on_time = pipe.execute()
    return {n: (int(d or 0), int(o or 0)) for n, d, o in zip(names, due, on_time, strict=True)}


def forget(pipe: Any, name: str) -> None:
    """Queue the removal of a deleted schedule's own history (totals stay)."""
    pipe.delete(FIRE_LOG_KEY.format(name))
    pipe.hdel(DUE_BY_SCHEDULE, name)
    pipe.hdel(ON_TIME_BY_SCHEDULE, name)


def drift_samples() -> list[float]:
    return [float(v) for v in get_redis().lrange(DRIFT_KEY, 0, -1)]


@signals.task_prerun.connect
def _record_start(task: Task, **_: Any) -> None:
    due_at = task.request.get(headers.DUE_AT)
    if due_at is None or not task.request.get(headers.SCHEDULE) or task.request.retries:
        return
    delay = time.time() - float(due_at)
    get_redis().pipeline(transaction=False).lpush(DRIFT_KEY, f"{delay:.6f}").ltrim(
        DRIFT_KEY, 0, DRIFT_SAMPLES - 1).execute()


@signals.task_postrun.connect
def _record_outcome(task: Task, state: str | None = None, **_: Any) -> None:
    name = task.request.get(headers.SCHEDULE)
    if name and state:
        set_if_exists(name, last_status=state, last_finished_at=time.time())
