"""``K1Scheduler``: RedBeat's scheduler with K1's fire hook (``celery beat -S`` this).

RedBeat keeps the schedules in Redis and lets one beat at a time hold its lock; the
others wait in ``beat_init`` until the lock is free. K1 changes one thing, what happens
when an entry is due (:meth:`K1Scheduler.fire`):

1. count the fire times passed since the entry's last run: one normally, several after
   beat downtime (never one fire per missed time);
2. ``catch_up: skip`` drops a fire that is missed (several times passed, or later than a
   standby beat needs to take over); ``once`` sends it;
3. advance the entry to its latest due time (the grid stays put), renewing the lock
   first if this loop has run long, so a beat that lost its lock never sends;
4. send the task with headers naming the schedule and its due time, record the fire
   (history, uptime counters; :mod:`k1.scheduling.history`), emit ``schedule_fired``.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from celery.utils.log import get_logger
from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis

from k1 import headers
from k1.events import emit
from k1.scheduling import history
from k1.scheduling.builtins import ensure_builtins
from k1.scheduling.entry import K1Entry
from k1.scheduling.store import ScheduleStore
from k1.scheduling.timing import due_points
from k1.tasks.submissions import Submission, record

logger = get_logger("k1.scheduling.beat")
BROKEN_RETRY = 60  # s; an unreadable entry is logged once a minute, not on every loop


class K1Scheduler(RedBeatScheduler):
    """RedBeat with time zones, a catch-up policy and fire accounting per schedule.

    :attr:`missed_after` (lock timeout + 2 loops): a fire later than this was missed,
    since a standby beat would have taken over by then.
    """

    Entry = K1Entry

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self.missed_after = self.lock_timeout + 2 * self.max_interval
        self._lock_renewed_at = time.monotonic()

    def setup_schedule(self) -> None:
        super().setup_schedule()
        ensure_builtins(ScheduleStore(self.app))

    @property
    def schedule(self) -> dict[str, K1Entry]:
        """The entries due now, and the next one due within a loop (to sleep until it).

        RedBeat's own floors the clock and the scores to whole seconds and peeks at one
        entry: of several due within the same second it may pick the last, and the others
        then wait up to a loop (measured: 0.4 s late at the median). K1 scores entries
        with their exact due time (:attr:`K1Entry.score`) and reads with the exact clock.
        """
        now = self.app.now().timestamp()
        client = get_redis(self.app)
        key = self.app.redbeat_conf.schedule_key
        with client.pipeline() as pipe:
            pipe.zrangebyscore(key, 0, now)
            pipe.zrangebyscore(key, f"({now}", now + self.max_interval, start=0, num=1)
            due, upcoming = pipe.execute()
        entries = {}
        for entry_key in due + upcoming:
            try:
                entry = self.Entry.from_key(entry_key, app=self.app)
            except KeyError:
                logger.warning("beat: schedule entry %s has no definition; dropping it",
                               entry_key)
                client.zrem(key, entry_key)
                continue
            except (ValueError, TypeError, ArithmeticError) as exc:
                self._park(entry_key, exc)
                continue
            entries[entry.name] = entry
        return entries

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self._lock_renewed_at = time.monotonic()  # RedBeat's tick renews it first thing
        return super().tick(*args, **kwargs)

    def maybe_due(self, entry: K1Entry, **kwargs: Any) -> float:
        try:
            is_due, next_time_to_run = entry.is_due()
        except (ValueError, TypeError, ArithmeticError) as exc:
            self._park(entry.key, exc)
            return self.max_interval
        if is_due:
            self._hold_lock()  # LockNotOwnedError ends this beat: k1 beat restarts it
            try:
                self.fire(entry, producer=kwargs.get("producer"))
            except Exception:
                logger.exception("beat: schedule %s could not fire", entry.name)
        return next_time_to_run

    def fire(self, entry: K1Entry, producer: Any = None) -> str | None:
        """Send (or skip) the due ``entry``; returns the task id sent, if any."""
        now = self.app.now()
        due = due_points(entry.schedule, entry.last_run_at, now)
        late = (now - due.latest).total_seconds()
        missed = due.count > 1 or late > self.missed_after
        entry._next_instance(last_run_at=due.latest)
        due_at, fired_at = due.latest.timestamp(), now.timestamp()
        fields = {"schedule": entry.spec_name, "task_name": entry.task, "due_at": due_at,
                  "project_id": entry.project_id, "missed": due.count - 1}
        if missed and entry.catch_up == "skip":
            logger.info("beat: schedule %s skipped %d missed fire(s)", entry.name, due.count)
            history.record_fire(entry.name, due_count=due.count, on_time=False, due_at=due_at,
                                fired_at=fired_at, task_id=None)
            emit("schedule_fired", type="skipped", **fields)
            return None
        task_id = self._send(entry, due.latest, producer)
        on_time = late <= history.ON_TIME_TOLERANCE
        logger.info("beat: schedule %s sent %s[%s] (%.3fs after due)", entry.name, entry.task,
                    task_id, late)
        history.record_fire(entry.name, due_count=due.count, on_time=on_time, due_at=due_at,
                            fired_at=fired_at, task_id=task_id)
        emit("schedule_fired", type="fired", task_id=task_id, on_time=on_time, **fields)
        return task_id

    def _send(self, entry: K1Entry, due_at: datetime, producer: Any) -> str:
        options = dict(entry.options)
        options["headers"] = {
            **options.get("headers", {}), "celery_beat_task": True,
            headers.SCHEDULE: entry.name, headers.DUE_AT: due_at.timestamp(),
            headers.PROJECT: entry.project_id,
        }
        task = self.app.tasks.get(entry.task)
        if task is not None:
            result = task.apply_async(entry.args, entry.kwargs, producer=producer, **options)
        else:
            result = self.app.send_task(entry.task, entry.args, entry.kwargs, producer=producer,
                                        **options)
        if entry.project_id is not None:  # GET /api/tasks/<id> answers for fired tasks too
            record(Submission(result.id, entry.task, entry.project_id, None, time.time()))
        return result.id

    def _park(self, entry_key: str, exc: Exception) -> None:
        """Look at an entry that cannot be read or computed again only after
        :data:`BROKEN_RETRY` (the API lists it with its error until it is fixed)."""
        logger.error("beat: schedule entry %s cannot be computed (%s: %s); retrying it in "
                     "%ds", entry_key, type(exc).__name__, exc, BROKEN_RETRY)
        get_redis(self.app).zadd(self.app.redbeat_conf.schedule_key,
                                 {entry_key: time.time() + BROKEN_RETRY})

    def _hold_lock(self) -> None:
        if self.lock is None or time.monotonic() - self._lock_renewed_at < self.max_interval:
            return
        self.lock.extend(int(self.lock_timeout))
        self._lock_renewed_at = time.monotonic()
