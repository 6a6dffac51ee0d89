"""One event schema for everything the dashboard shows, and one way to send it.

    from k1.events import emit
    emit("task_event", type="dead", task_id=..., task_name=..., project_id="acme",
         user_id="ada", state="FAILURE", attempt=3, exception="TimeoutError")

An event is a flat JSON object ``{type, task_id, task_name, project_id, user_id, state,
attempt, ts, ...}``. It goes to the Socket.IO rooms ``project_<id>`` and ``user_<id>``
(or, for platform-wide events such as ``breaker_state``, to ``platform``, which every
authenticated connection joins) through a write-only Redis publisher: no web app needed,
one round trip to Redis (the publish pipelined with the metrics counters of
:mod:`k1.events.metrics`), and a failure to publish never fails or slows the caller.

The publisher writes the message python-socketio's ``PubSubManager.emit`` writes (a JSON
object on the ``k1-socketio`` channel, checked against python-socketio 5.18), so the web
process's ordinary Redis manager relays it to the rooms. It is its own small client
rather than ``socketio.RedisManager(write_only=True)`` for two reasons: the counters
travel in the same pipeline, and a Redis outage costs a task at most one short timeout
(``PUBLISH_TIMEOUT``), after which events are dropped for ``PAUSE_AFTER_FAILURE`` instead
of being retried in the task's time.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from k1.events import metrics
from k1.settings import get_settings

log = logging.getLogger(__name__)

SOCKETIO_CHANNEL = "k1-socketio"  # the web process listens on the same channel
PLATFORM_ROOM = "platform"
PUBLISH_TIMEOUT = 0.5  # seconds; Redis answers a PUBLISH in well under a millisecond
PAUSE_AFTER_FAILURE = 5.0  # seconds without publishing after a failure: tasks stay fast

# Socket.IO event names (the outside contract) and the task_event types.
EVENT_NAMES = ("task_event", "task_completed", "dlq_changed", "breaker_state",
               "schedule_fired", "workflow_event", "metrics", "limit_state")
TASK_EVENT_TYPES = ("received", "started", "retried", "succeeded", "failed", "dead")


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
    rooms = []
    if event.get("project_id"):
        rooms.append(project_room(event["project_id"]))
    if event.get("user_id"):
        rooms.append(user_room(event["user_id"]))
    return rooms or [PLATFORM_ROOM]


def emit(name: str, /, *, type: str, **fields: Any) -> dict[str, Any]:
    """Build the event and publish it as Socket.IO event ``name``; returns the event.

    ``name`` is positional-only so that an event may carry a ``name`` field (breakers do).
    """
    if name not in EVENT_NAMES:
        raise ValueError(f"unknown event name {name!r}")
    event = make_event(type, **fields)
    publish([(name, event)])
    return event


def publish(events: list[tuple[str, dict[str, Any]]]) -> bool:
    """Publish built events (in order, one round trip) and count them; never raises.

    Several events go together when one moment yields them (``succeeded`` and
    ``task_completed``). Returns False when they were dropped (Redis unreachable).
    """
    return _publisher().publish(events)


class _Publisher:
    """Write-only publisher onto the Socket.IO message queue, with metrics counters."""

    def __init__(self, url: str, channel: str) -> None:
        self.channel = channel
        self.host_id = uuid.uuid4().hex  # the web process relays messages of other hosts
        self.redis = redis.Redis.from_url(
            url, socket_timeout=PUBLISH_TIMEOUT, socket_connect_timeout=PUBLISH_TIMEOUT,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self.paused_until = 0.0
        self.lock = threading.Lock()  # one pipeline at a time keeps a process's order

    def publish(self, events: list[tuple[str, dict[str, Any]]]) -> bool:
        if time.monotonic() < self.paused_until:
            return False
        try:
            with self.lock:
                pipe = self.redis.pipeline(transaction=False)
                for name, event in events:
                    pipe.publish(self.channel, self._message(name, event))
                    metrics.count_event(pipe, name, event)
                pipe.execute()
        except Exception as exc:  # a dashboard outage must never fail a task
            self.paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.warning("events %s not published (pausing %.0fs): %s",
                        [f"{n}/{e.get('type')}" for n, e in events], PAUSE_AFTER_FAILURE, exc)
            return False
        return True

    def _message(self, name: str, event: dict[str, Any]) -> str:
        # What python-socketio's PubSubManager.emit publishes for an emit to rooms.
        return json.dumps({
            "method": "emit", "event": name, "data": [event], "binary": False,
            "namespace": "/", "room": rooms_for(event), "skip_sid": None,
            "callback": None, "host_id": self.host_id,
        }, default=str)


@functools.cache
def _publisher() -> _Publisher:
    return _Publisher(get_settings().redis_url, SOCKETIO_CHANNEL)
