"""One event schema for everything the dashboard shows, and one way to send it.

    from k1.events import emit
    emit("task_event", type="dead", task_id=..., task_name=..., project_id="acme",
         user_id="ada", state="FAILURE", attempt=3, exception="TimeoutError")

An event is a flat JSON object ``{type, task_id, task_name, project_id, user_id, state,
attempt, ts, ...}``. It goes to the Socket.IO rooms ``project_<id>`` and ``user_<id>``
(or, for platform-wide events such as ``breaker_state``, to ``platform``, which every
authenticated connection joins) through a write-only Redis manager: no web app needed,
one publish, and a failure to publish never fails the caller.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import socketio

from k1.settings import get_settings

log = logging.getLogger(__name__)

SOCKETIO_CHANNEL = "k1-socketio"  # the web process listens on the same channel
PLATFORM_ROOM = "platform"

# Socket.IO event names (the outside contract) and the task_event types.
EVENT_NAMES = ("task_event", "task_completed", "dlq_changed", "breaker_state",
               "schedule_fired", "workflow_event", "metrics")
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


def emit(name: str, *, type: str, **fields: Any) -> dict[str, Any]:
    """Build the event and publish it as Socket.IO event ``name``; returns the event."""
    if name not in EVENT_NAMES:
        raise ValueError(f"unknown event name {name!r}")
    event = make_event(type, **fields)
    try:
        _manager().emit(name, event, namespace="/", room=rooms_for(event))
    except Exception as exc:  # a dashboard outage must never fail a task
        log.warning("event %s/%s not published: %s", name, type, exc)
    return event


@functools.cache
def _manager() -> socketio.RedisManager:
    return socketio.RedisManager(get_settings().redis_url, channel=SOCKETIO_CHANNEL,
                                 write_only=True)
