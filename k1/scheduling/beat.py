"""``K1Scheduler``: RedBeat's scheduler with K1's loop (``celery beat -S`` this).

RedBeat keeps the schedules in Redis and lets one beat at a time hold its lock; the
others wait in ``beat_init`` until the lock is free. K1 keeps RedBeat's storage and lock
and replaces its loop (:meth:`K1Scheduler.tick`), which handled one entry at a time with
several Redis round trips each (about 40 fires/s on a loaded 2-core machine). A loop
takes the entries due now from the sorted set and works through them in batches of
:data:`BATCH`, each with a fixed number of round trips whatever its size:

1. load the batch's definitions and anchors (one pipeline);
2. for each entry, count the fire times passed since its last run (one normally, several
   after beat downtime, never one fire per missed time); ``catch_up: skip`` drops a fire
   that is missed (several times passed, or later than a standby beat needs to take
   over), ``once`` sends it;
3. advance every due entry to its latest due time (the grid stays put) in one pipeline of
   scripts that skip an entry deleted meanwhile, renewing the lock first if this loop has
   run long, so a beat that lost its lock never advances nor sends; advancing before
   sending makes a crash lose a fire rather than send it twice;
4. send each task through :func:`k1.tasks.submissions.send` on beat's one producer, with
   headers naming the schedule and its due time, in kombu's publish batch (pipelined);
5. record the fires (history, uptime counters; :mod:`k1.scheduling.history`) and the
   submissions in one pipeline, then publish the ``schedule_fired`` events together.

A stop signal (SIGTERM on a deploy) waits for the batch in hand, then beat closes and
releases its lock, so a standby takes over at once instead of after the lock timeout.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery.result import denied_join_result
from celery.utils.log import get_logger
from kombu.exceptions import BatchPublishError
from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis
from redis.exceptions import LockNotOwnedError

from k1 import headers
from k1.events import make_event, publish
from k1.scheduling import history
from k1.scheduling.builtins import ensure_builtins
from k1.scheduling.entry import K1Entry, entry_from_fields
from k1.scheduling.store import ScheduleStore
from k1.scheduling.timing import Due, due_points, next_after
from k1.tasks.submissions import send

logger = get_logger("k1.scheduling.beat")

BATCH = 200  # due entries per group of round trips (a few on a loaded machine, per batch)
PUBLISH_BATCH = 2 * BATCH  # broker operations per flush: a task and its task-sent event
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
BROKEN_RETRY = 60  # s; an unreadable entry is logged once a minute, not on every loop

# Advance an entry that still exists. KEYS: entry, RedBeat's sorted set; ARGV: meta, score.
_ADVANCE = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('hset', KEYS[1], 'meta', ARGV[1])
redis.call('zadd', KEYS[2], ARGV[2], KEYS[1])
return 1
"""


@dataclass
class Fire:
    """A due entry of this loop, advanced, and what became of it."""

    entry: K1Entry
    due: Due
    task_id: str | None = None


@contextmanager
def _stop_signals_deferred() -> Iterator[None]:
    """SIGTERM/SIGINT received in this block take effect when it ends.

    Celery beat stops by raising SystemExit from its signal handler, wherever the loop
    is; inside a batch that would drop fires already advanced (and the publishes kombu
    still holds). Deferred, the stop comes a batch later at most, then beat closes and
    releases its lock as before. Signal handlers belong to the main thread: elsewhere
    (beat embedded in a worker) nothing is deferred.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signum: signal.signal(signum, lambda received, _: pending.append(received))
                for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            signal.raise_signal(pending[0])  # now, to beat's own handler


class K1Scheduler(RedBeatScheduler):
    """RedBeat with time zones, a catch-up policy, fire accounting per schedule and a
    batched loop.

    :attr:`missed_after` (lock timeout + 2 loops): a fire later than this was missed,
    since a standby beat would have taken over by then.
    """

    Entry = K1Entry

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self.missed_after = self.lock_timeout + 2 * self.max_interval
        self._lock_renewed_at = 0.0  # renewed at the first tick
        self._lost_lock: LockNotOwnedError | None = None
        self._advance = get_redis(app).register_script(_ADVANCE)

    def setup_schedule(self) -> None:
        super().setup_schedule()
        ensure_builtins(ScheduleStore(self.app))

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Fire every entry due now; returns the seconds until the next is due (at most a
        loop).

        Entries are scored with their exact due time (:attr:`K1Entry.score`) and read with
        the exact clock: RedBeat's loop floors both to whole seconds and peeks at one
        entry, so of several due within a second the others waited up to a loop.
        """
        # LockNotOwnedError ends this beat (k1 beat restarts it). Renewed once per loop
        # interval, not per tick: with fires 25 ms apart, RedBeat's renewal at every tick
        # was a round trip per fire; the lock outlives 3 loop intervals.
        self._hold_lock()
        client = get_redis(self.app)
        key = self.app.redbeat_conf.schedule_key
        now = self.app.now().timestamp()
        with client.pipeline() as pipe:
            pipe.zrangebyscore(key, 0, now)
            pipe.zrangebyscore(key, f"({now}", "+inf", start=0, num=1, withscores=True)
            due, upcoming = pipe.execute()
        for start in range(0, len(due), BATCH):
            self.fire(due[start:start + BATCH])
        if not upcoming:
            return self.max_interval
        return max(0.0, min(self.max_interval, upcoming[0][1] - time.time()))

    def fire(self, keys: list[str]) -> list[Fire]:
        """Fire the entries stored under ``keys`` that are due; returns their fires (a
        ``task_id`` of None: skipped or failed to send)."""
        with _stop_signals_deferred():  # advanced fires are sent and recorded, then stop
            return self._fire(keys)

    def _fire(self, keys: list[str]) -> list[Fire]:
        fires = self._advance_due(keys)
        events = []
        with get_redis(self.app).pipeline(transaction=False) as pipe:
            try:
                # kombu's publish batch: the tasks and their task-sent events go out in
                # pipelines, flushed when the block ends (a round trip per fire before).
                # denied_join_result: beat never waits for a result, so Celery must not
                # subscribe to each task's result channel (two round trips per send, and
                # unread result messages piling up on beat's connection).
                with denied_join_result(), self.producer.batch(max_size=PUBLISH_BATCH):
                    for fire in fires:
                        self._keep_lock()
                        event = self._send(fire, pipe)
                        if event is not None:
                            events.append(("schedule_fired", event))
            except BatchPublishError:  # advanced, not known to be sent: lost, not doubled
                logger.exception("beat: %d fire(s) may not have been sent", len(fires))
                for fire in fires:
                    fire.task_id = None
                return fires
            pipe.execute()  # the fires' history and the tasks' submissions
        publish(events)
        if self._lost_lock is not None:  # noticed while sending what was advanced already
            raise self._lost_lock
        sent = sum(1 for fire in fires if fire.task_id)
        if fires:
            logger.info("beat: %d schedule(s) due, %d sent", len(fires), sent)
        return fires

    def _advance_due(self, keys: list[str]) -> list[Fire]:
        """Load ``keys``, advance those due to their latest due time; their fires."""
        client = get_redis(self.app)
        zset = self.app.redbeat_conf.schedule_key
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, "definition", "meta")
            stored = pipe.execute()
        now = self.app.now()
        fires: list[tuple[int, Fire]] = []  # with the position of its script's reply
        with client.pipeline(transaction=False) as pipe:
            for key, (definition, meta) in zip(keys, stored, strict=True):
                if not definition:
                    logger.warning("beat: schedule entry %s has no definition; dropping it",
                                   key)
                    pipe.zrem(zset, key)
                    continue
                try:
                    entry = entry_from_fields({"definition": definition, "meta": meta},
                                              self.app)
                    due = self._due(entry, now)
                    if due is not None:
                        entry.last_run_at = due.latest
                    score = entry.score
                except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
                    self._park(pipe, key, exc)
                    continue
                if due is None:  # edited or paused since it was scored: only rescore it
                    pipe.zadd(zset, {key: score}, xx=True)
                    continue
                fires.append((len(pipe), Fire(entry, due)))
                self._advance(keys=[key, zset], args=[entry.encoded_meta(), score],
                              client=pipe)
            self._hold_lock()  # LockNotOwnedError ends this beat before anything changes
            replies = pipe.execute()
        return [fire for position, fire in fires if replies[position] == 1]  # 0: deleted

    def _due(self, entry: K1Entry, now: datetime) -> Due | None:
        """The fire times passed for ``entry``, or None if it is not due (paused, or its
        timing changed since it was scored)."""
        if not entry.enabled:
            return None
        if entry.last_run_at is not None and next_after(entry.schedule,
                                                        entry.last_run_at) > now:
            return None
        return due_points(entry.schedule, entry.last_run_at, now)

    def _send(self, fire: Fire, pipe: Any) -> dict[str, Any] | None:
        """Send (or skip) an advanced fire, recording it on ``pipe``; its event."""
        entry, due = fire.entry, fire.due
        due_at, fired_at = due.latest.timestamp(), time.time()
        late = fired_at - due_at
        fields = {"schedule": entry.spec_name, "task_name": entry.task, "due_at": due_at,
                  "project_id": entry.project_id, "missed": due.count - 1}
        if (due.count > 1 or late > self.missed_after) and entry.catch_up == "skip":
            logger.debug("beat: schedule %s skipped %d missed fire(s)", entry.name, due.count)
            history.record_fire(entry.name, due_count=due.count, on_time=False, due_at=due_at,
                                fired_at=fired_at, task_id=None, pipe=pipe)
            return make_event("skipped", **fields)
        options = dict(entry.options)
        stamped = {**options.pop("headers", {}), "celery_beat_task": True,
                   headers.SCHEDULE: entry.name, headers.DUE_AT: due_at}
        try:
            fire.task_id = send(entry.task, entry.args, entry.kwargs,
                                project_id=entry.project_id, headers=stamped,
                                producer=self.producer, pipe=pipe, **options)
        except Exception:  # one schedule's failure never stops the others' fires
            logger.exception("beat: schedule %s could not fire", entry.name)
            return None
        on_time = late <= history.ON_TIME_TOLERANCE
        logger.debug("beat: schedule %s sent %s[%s] (%.3fs after due)", entry.name,
                     entry.task, fire.task_id, late)
        history.record_fire(entry.name, due_count=due.count, on_time=on_time, due_at=due_at,
                            fired_at=fired_at, task_id=fire.task_id, pipe=pipe)
        return make_event("fired", task_id=fire.task_id, on_time=on_time, **fields)

    def _park(self, pipe: Any, key: str, exc: Exception) -> None:
        """Look at an entry that cannot be read or computed again only after
        :data:`BROKEN_RETRY` (the API lists it with its error until it is fixed)."""
        logger.error("beat: schedule entry %s cannot be computed (%s: %s); retrying it in "
                     "%ds", key, type(exc).__name__, exc, BROKEN_RETRY)
        pipe.zadd(self.app.redbeat_conf.schedule_key, {key: time.time() + BROKEN_RETRY},
                  xx=True)

    def _keep_lock(self) -> None:
        """Renew the lock while a long batch is sent; a lost lock ends this beat after the
        batch (its entries are advanced already: no other beat sends them)."""
        if self._lost_lock is None:
            try:
                self._hold_lock()
            except LockNotOwnedError as exc:
                self._lost_lock = exc

    def _hold_lock(self) -> None:
        """Renew the lock if a loop interval has passed since it was last renewed."""
        if not self.lock_key:  # configured without a lock (a single beat by design)
            return
        if self.lock is None:  # its acquisition failed at start (Celery hides why)
            raise LockNotOwnedError("beat holds no lock; restarting to take it")
        if time.monotonic() - self._lock_renewed_at < self.max_interval:
            return
        self.lock.extend(int(self.lock_timeout))
        self._lock_renewed_at = time.monotonic()
