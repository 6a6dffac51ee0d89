"""One event schema for everything the dashboard shows, and one way to send it.

    from k1.events import emit
    emit("breaker_state", type="open", name="external-api", state="open")

An event is a flat JSON object ``{type, task_id, task_name, project_id, user_id, state,
attempt, ts, ...}``. It goes to the Socket.IO rooms ``project_<id>`` and ``user_<id>``
(or, for platform-wide events such as ``breaker_state``, to ``platform``, which every
authenticated connection joins) through a write-only Redis publisher: no web app needed,
and a failure to publish never fails or slows the caller.

**Task transitions are written once.** A task's ``task_event`` s (and the
``task_completed`` of its success) are not published by the worker: each transition is
one task history record (:mod:`k1.history.capture`: the event plus the arguments and
links history keeps) on the history stream, and every web process derives the Socket.IO
events from the stream (:func:`events_of`; the web process's relay,
:mod:`k1.web.relay`), while the recorder stores the same records in PostgreSQL. A
worker so pays one ``XADD`` per transition, not a Socket.IO message beside a record, and
a dashboard gets a task's transitions in the stream's order, late rather than never after
a Redis outage. The task counters (:mod:`k1.events.metrics`) are bumped in the same round
trip as the records, once per transition.

Publishing is off the caller's path: :func:`emit`, :func:`publish` and
:func:`k1.history.capture.capture` put their entries in this process's buffer and
return; a background thread (started lazily, again in each process after a fork) waits
``FLUSH_LINGER`` after the first entry and sends whatever the buffer holds in one
pipelined round trip: the ``XADD`` of each record (entries named :data:`HISTORY`), the
``PUBLISH`` of each other event, and the counters of the batch's transitions. While one
round trip is under way the next entries gather. The buffer is bounded (``MAX_BUFFERED``:
beyond it, entries are dropped, never waited for), one process's entries go out in the
order they were buffered, and ``publish(..., wait=True)`` sends the buffer and the
entries in the caller's thread when a later entry of another process must not overtake
them. The buffer is sent at exit (``atexit``; Celery's pool processes call :func:`flush`
on ``worker_process_shutdown``). The process's result writes send the buffer too, in their
own round trip (:func:`send_with`, :class:`k1.celery.ResultBackend`): a worker's pool
process writes each task's STARTED and SUCCESS anyway, so at load the records ride those
writes and the flusher mostly finds the buffer empty. A worker's Celery heartbeats travel
the same way, as entries named :data:`HEARTBEAT` (:mod:`k1.events.heartbeats`).

The publisher is a ``socketio.RedisManager(write_only=True)`` whose ``_publish`` puts the
message python-socketio built into K1's own pipeline: the library keeps the wire format
(the web process's ordinary Redis manager relays it to the rooms), and a Redis outage
costs the flusher at most one short timeout (``PUBLISH_TIMEOUT``), after which events are
dropped for ``PAUSE_AFTER_FAILURE`` (the library's own ``_publish`` retries, and
connects, on its own).

History records are not dropped with them: a task's history must say how it ended even
if it ended while Redis restarted. The records of a failed round trip, those buffered
behind it and those captured during the pause are *kept* (at most ``MAX_KEPT_HISTORY``
per process, the oldest dropped beyond it, counted and logged) and sent first, in order,
when the pause is over: the flusher tries again by itself, once a pause, until Redis
answers (the web process, which has no flusher, with its next publish). Keeping costs
the caller an append, never a wait. A record sent again after a round trip whose outcome
was unknown is harmless to history (the recorder stores each record id once); the
dashboard may then see that transition twice, and the counters count it twice. A process that exits
tries to send what it kept for up to ``EXIT_FLUSH_TIMEOUT``.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
import socketio
from redis.backoff import NoBackoff
from redis.retry import Retry

from k1.events import heartbeats, metrics
from k1.history import stream as history_stream
from k1.settings import get_settings

log = logging.getLogger(__name__)

SOCKETIO_CHANNEL = "k1-socketio"  # the web process listens on the same channel
PLATFORM_ROOM = "platform"  # every connection: platform-wide facts, no tenant's data
OPERATORS_ROOM = "operators"  # operators' connections only
OPERATORS = "operators"  # an event's ``audience`` when only operators may see it
PUBLISH_TIMEOUT = 0.5  # seconds; Redis answers a PUBLISH in well under a millisecond
PAUSE_AFTER_FAILURE = 5.0  # seconds without publishing after a failure: tasks stay fast
MAX_BUFFERED = 10_000  # events waiting to be sent, at most: a Redis outage costs no memory
# History records kept through a Redis outage, per process: a minute of a pool process
# running 50 tasks/s (three records a task), ~25 MB with every record at its bound.
MAX_KEPT_HISTORY = 10_000
# Seconds a process that exits keeps trying to send the history records it kept through an
# outage (a deploy during a Redis restart), one try every EXIT_RETRY_INTERVAL.
EXIT_FLUSH_TIMEOUT = 10.0
EXIT_RETRY_INTERVAL = 0.5
FLUSH_BATCH = 500  # events per round trip at most, so that one reply stays small
# Seconds the flusher waits after the first event before sending: a task's events
# (received, started, succeeded) then share one round trip instead of two or three.
FLUSH_LINGER = 0.004

# Socket.IO event names (the outside contract) and the task_event types.
EVENT_NAMES = ("task_event", "task_completed", "dlq_changed", "breaker_state",
               "schedule_fired", "workflow_event", "metrics", "limit_state")
# Derived from the task history records (events_of), never emitted by name.
TRANSITION_EVENTS = ("task_event", "task_completed")
TASK_EVENT_TYPES = ("received", "started", "retried", "succeeded", "failed", "dead")
# A buffer entry ``(HISTORY, record)`` is a task history record for the history stream.
HISTORY = "k1:history"
# A buffer entry ``(HEARTBEAT, record)`` is a worker's Celery heartbeat (k1.events.heartbeats).
HEARTBEAT = "k1:heartbeat"


def project_room(project_id: str) -> str:
    return f"project_{project_id}"


def user_room(user_id: str) -> str:
    return f"user_{user_id}"


def make_event(type: str, **fields: Any) -> dict[str, Any]:
    """An event in the one schema; unknown fields are kept, missing ones are None."""
    event = {
        "type": type, "task_id": None, "task_name": None, "project_id": None,
        "user_id": None, "state": None, "attempt": None, "ts": time.time(),
    }
    event.update(fields)
    for key in ("project_id", "user_id"):
        if event[key] is not None:
            event[key] = str(event[key])
    return event


def rooms_for(event: dict[str, Any]) -> list[str]:
    """The rooms an event goes to: its project's and its user's; the operators' too when
    its ``audience`` says so (it may name no project: tenants' data of no single one);
    else, with none of these, everyone's."""
    rooms = []
    if event.get("project_id"):
        rooms.append(project_room(event["project_id"]))
    if event.get("user_id"):
        rooms.append(user_room(event["user_id"]))
    if event.get("audience") == OPERATORS:
        rooms.append(OPERATORS_ROOM)
    return rooms or [PLATFORM_ROOM]


def emit(name: str, /, *, type: str, **fields: Any) -> dict[str, Any]:
    """Build the event and publish it as Socket.IO event ``name``; returns the event.

    ``name`` is positional-only so that an event may carry a ``name`` field (breakers do).
    A task transition is not emitted but captured as a history record
    (:func:`k1.history.capture.capture`), from which the web processes derive its events.
    """
    if name in TRANSITION_EVENTS:
        raise ValueError(f"{name!r} is derived from the task's history record: capture "
                         "the record (k1.history.capture) instead of emitting it")
    if name not in EVENT_NAMES:
        raise ValueError(f"unknown event name {name!r}")
    event = make_event(type, **fields)
    publish([(name, event)])
    return event


def events_of(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The Socket.IO events of a task history record: its ``task_event`` (the record
    without the fields only history keeps), and ``task_completed`` for a success; none
    for a record of another type (``submitted``, ``lost``, ``requeued``)."""
    if record.get("type") not in TASK_EVENT_TYPES:
        return []
    event = {key: value for key, value in record.items()
             if key not in history_stream.RECORD_ONLY_FIELDS}
    if event["type"] == "succeeded":
        return [("task_event", event), ("task_completed", event)]
    return [("task_event", event)]


def publish(events: list[tuple[str, dict[str, Any]]], *, wait: bool = False) -> bool:
    """Publish built events in order and count them; never raises.

    Without ``wait`` the events are buffered and sent by the background flusher (True:
    accepted); with it, they and everything buffered before them are sent now, in this
    thread (True: sent). False when any was dropped (buffer full; Redis unreachable,
    though history records are then kept and sent later) or, with ``wait``, not sent.
    Inside :func:`collecting` they are handed to its list instead.
    """
    collected = getattr(_collecting, "events", None)
    if collected is not None:
        collected.extend(events)
        return True
    return _publisher().publish(events, wait=wait)


_collecting = threading.local()


@contextlib.contextmanager
def collecting(into: list[tuple[str, dict[str, Any]]]) -> Iterator[None]:
    """Hand the events this thread publishes to ``into`` instead, for its caller to
    publish elsewhere: the web process's pool threads must not touch the green locks and
    sockets of the publisher (k1.web.offload.blocking publishes them on the hub).
    """
    _collecting.events = into
    try:
        yield
    finally:
        _collecting.events = None


def flush(timeout: float = 0.0) -> bool:
    """Send what this process's buffer holds now; False if Redis could not be reached.
    ``timeout`` (a process that exits): keep trying that long to send the history records
    kept through an outage."""
    return _publisher().flush(timeout)


def send_with(pipe: Any) -> None:
    """Execute ``pipe`` (a pipeline another client filled) with this process's buffered
    events in the same round trip: a Celery worker's result writes carry its task history
    records so (:class:`k1.celery.ResultBackend`), and the flusher rarely needs a round
    trip of its own. Raises what ``pipe.execute()`` raises."""
    _publisher().send_with(pipe)


def publish_in_caller_thread() -> None:
    """Make every publish of this process wait for its round trip, in the caller's thread.

    For the web process: under eventlet its threads are green, and events are published
    from eventlet's pool of real threads (:func:`k1.web.offload.blocking`) too, which
    cannot wake a green flusher. Its events are few (replays, breaker resets) and never on
    a task's path; its other entries are the history records of the tasks it submits.
    """
    _publisher().synchronous = True


class _JSON:
    """The JSON module python-socketio encodes with: values JSON lacks (datetimes) as text."""

    dumps = staticmethod(functools.partial(json.dumps, default=str))
    loads = staticmethod(json.loads)


class Publisher(socketio.RedisManager):
    """Write-only Socket.IO publisher with a buffer, whose messages travel in K1's pipeline.

        publisher = Publisher("redis://localhost:6379/0")
        publisher.publish([("breaker_state", make_event("open", name="external-api"))])
        publisher.flush()        # what is buffered, now (at exit)

    ``emit`` (python-socketio's) builds each message and hands it to :meth:`_publish`,
    which queues it in the pipeline being sent, beside the metrics counters; the
    library's own connection is never opened. ``max_buffered`` bounds the buffer;
    ``flush_linger`` is how long the flusher gathers events before a round trip;
    ``max_kept_history`` bounds the history records kept through an outage (``kept``;
    ``history_dropped`` counts those dropped beyond it).
    """

    def __init__(self, url: str, channel: str = SOCKETIO_CHANNEL, *,
                 pause_after_failure: float = PAUSE_AFTER_FAILURE,
                 max_buffered: int = MAX_BUFFERED, flush_linger: float = FLUSH_LINGER,
                 max_kept_history: int = MAX_KEPT_HISTORY) -> None:
        super().__init__(url, channel=channel, write_only=True, json=_JSON)
        self.client = redis.Redis.from_url(
            url, socket_timeout=PUBLISH_TIMEOUT, socket_connect_timeout=PUBLISH_TIMEOUT,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self.pause_after_failure = pause_after_failure
        self.max_buffered = max_buffered
        self.flush_linger = flush_linger
        self.max_kept_history = max_kept_history
        self.history_dropped = 0  # history records dropped beyond max_kept_history
        self.synchronous = False  # True: every publish is sent in the caller's thread
        self.paused_until = 0.0
        self.pipe: redis.client.Pipeline | None = None  # the pipeline being filled
        self._after_fork()
        # A forked child starts empty: what the parent buffered is the parent's to send.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self.buffer: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        # History records a failure kept, older than everything in ``buffer``: sent first.
        self.kept: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.lock = threading.Lock()  # one pipeline at a time keeps a process's order
        # Held for a moment where a failure moves records into ``kept`` and where publish
        # chooses ``buffer`` or ``kept``: no record lands behind a newer one.
        self.keeping = threading.Lock()
        self.kept_lost = 0  # dropped beyond max_kept_history since the last outage began
        self.wakeup = threading.Event()
        self.flusher: threading.Thread | None = None
        self.flusher_waiting = False  # the flusher waits for entries: publish() wakes it
        self.starting = threading.Lock()

    def publish(self, events: list[tuple[str, dict[str, Any]]], *, wait: bool = False) -> bool:
        """Buffer built events (``wait``: and send the buffer now). False when any was
        dropped or, with ``wait``, not sent; during the pause after a failure, events
        are dropped and history records kept (True without ``wait`` when all were)."""
        with self.keeping:
            if time.monotonic() < self.paused_until:
                return self._keep(events) and not wait
            if len(self.buffer) + len(events) > self.max_buffered:
                log.warning("events %s dropped: %d events are waiting to be sent",
                            _names(events), len(self.buffer))
                return False
            self.buffer.extend(events)
        if wait or self.synchronous:
            return self.flush()
        if self.flusher is None:
            self._start_flusher()
        if self.flusher_waiting:  # else it is lingering or sending: it takes these too
            self.wakeup.set()
        return True

    def _keep(self, events: list[tuple[str, dict[str, Any]]]) -> bool:
        """Keep the history records of ``events`` for after the pause (with ``keeping``
        held); True when nothing was dropped."""
        history = [entry for entry in events if entry[0] == HISTORY]
        self.kept.extend(history)
        self._bound_kept()
        return len(history) == len(events)

    def _bound_kept(self) -> None:
        excess = len(self.kept) - self.max_kept_history
        if excess <= 0:
            return
        for _ in range(excess):
            self.kept.popleft()  # the oldest: the newest say more about the tasks now
        if not self.kept_lost:
            log.warning("Redis unreachable: %d history records kept, the oldest dropped "
                        "from now on", self.max_kept_history)
        self.kept_lost += excess
        self.history_dropped += excess

    def flush(self, timeout: float = 0.0) -> bool:
        """Send everything kept and buffered, in order, in this thread; False if it failed.

        ``timeout`` (a process that exits: no task waits for it any more): the pause is
        ignored and, while history records are kept, tried again every
        ``EXIT_RETRY_INTERVAL`` for that long.
        """
        deadline = time.monotonic() + timeout
        while True:
            if timeout:
                self.paused_until = 0.0
            if self._flush_once():
                return True
            if not self.kept or time.monotonic() + EXIT_RETRY_INTERVAL > deadline:
                if timeout and self.kept:
                    log.warning("%d history records not sent: Redis did not answer within "
                                "%.0fs", len(self.kept), timeout)
                return False
            time.sleep(EXIT_RETRY_INTERVAL)

    def _flush_once(self) -> bool:
        with self.lock:
            while self.kept or self.buffer:
                if time.monotonic() < self.paused_until:
                    return False
                if not self._send(self._next_batch()):
                    return False
                if not self.kept and self.kept_lost:
                    log.warning("history records kept through a Redis outage sent; %d "
                                "older ones were dropped (more than %d)", self.kept_lost,
                                self.max_kept_history)
                    self.kept_lost = 0
        return True

    def _next_batch(self) -> list[tuple[str, dict[str, Any]]]:
        batch: list[tuple[str, dict[str, Any]]] = []
        for source in (self.kept, self.buffer):
            while source and len(batch) < FLUSH_BATCH:
                batch.append(source.popleft())
        return batch

    def _send(self, batch: list[tuple[str, dict[str, Any]]], pipe: Any = None) -> bool:
        """Send ``batch`` in one round trip: on this publisher's own pipeline, or queued
        after the commands already on ``pipe`` (:meth:`send_with`, which raises its
        failure for the pipeline's owner to handle)."""
        try:
            self.pipe = self.client.pipeline(transaction=False) if pipe is None else pipe
            records = []
            for name, event in batch:
                if name == HISTORY:
                    history_stream.add(self.pipe, event)
                    records.append(event)
                elif name == HEARTBEAT:
                    heartbeats.add(self.pipe, event)
                else:
                    self.emit(name, event, namespace="/", room=rooms_for(event))
            metrics.count_transitions(self.pipe, records)
            self.pipe.execute()
        except Exception as exc:  # a dashboard outage must never fail a task
            self._pause(batch)
            log.warning("events %s not published (pausing %.0fs, %d history records kept): "
                        "%s", _names(batch), self.pause_after_failure, len(self.kept), exc)
            if pipe is not None:
                raise
            return False
        finally:
            self.pipe = None
        return True

    def send_with(self, pipe: Any) -> None:
        """Execute ``pipe``, a pipeline of another client with its own commands queued,
        with what this process has buffered (what a pause keeps excepted) in the same
        round trip; raises what ``pipe.execute()`` raises, the buffered entries then kept
        or dropped as after any failure. The flusher's round trip in flight is not waited
        for: ``pipe`` then goes alone."""
        if not (self.buffer or self.kept) or not self.lock.acquire(blocking=False):
            pipe.execute()
            return
        try:
            if time.monotonic() < self.paused_until:
                pipe.execute()
                return
            self._send(self._next_batch(), pipe)
        finally:
            self.lock.release()

    def _pause(self, failed: list[tuple[str, dict[str, Any]]]) -> None:
        """Stop publishing for ``pause_after_failure``, dropping the events (stale by
        then) and keeping the history records of ``failed`` and of the buffer, in order."""
        with self.keeping:
            self.paused_until = time.monotonic() + self.pause_after_failure
            self.kept.extendleft(reversed([entry for entry in failed if entry[0] == HISTORY]))
            while self.buffer:
                entry = self.buffer.popleft()
                if entry[0] == HISTORY:
                    self.kept.append(entry)
            self._bound_kept()
        if self.kept and not self.synchronous:  # the web process: its next publish sends them
            if self.flusher is None:
                self._start_flusher()
            self.wakeup.set()  # a flusher waiting for events now waits for the pause's end

    def _publish(self, data: dict[str, Any]) -> None:
        # python-socketio's PubSubManager.emit built ``data``: the wire format is the library's.
        assert self.pipe is not None, "Publisher.emit outside Publisher.flush"
        self.pipe.publish(self.channel, self.json.dumps(data))

    def _start_flusher(self) -> None:
        with self.starting:
            if self.flusher is None:
                self.flusher = threading.Thread(target=self._flush_forever, daemon=True,
                                                name="k1-events-flusher")
                self.flusher.start()

    def _flush_forever(self) -> None:
        while True:
            # Set before the buffer is looked at, read by publish() after it appended: an
            # entry is either seen here or wakes the wait. Waking a thread costs a task
            # more than the rest of its publish; one lingering or sending needs no wake.
            self.flusher_waiting = True
            if not self.buffer or time.monotonic() < self.paused_until:
                # Records kept through an outage: try again when the pause is over.
                self.wakeup.wait(max(0.0, self.paused_until - time.monotonic())
                                 if self.kept else None)
            self.flusher_waiting = False
            if self.flush_linger:
                time.sleep(self.flush_linger)
            self.wakeup.clear()  # before sending: an event buffered meanwhile wakes us again
            self.flush()


def _names(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [f"{name}/{event.get('type')}" for name, event in events][:10]


@functools.cache
def _publisher() -> Publisher:
    publisher = Publisher(get_settings().redis_url)
    atexit.register(lambda: publisher.flush(EXIT_FLUSH_TIMEOUT))
    return publisher
