"""The relay: task transitions from the history stream to this process's Socket.IO clients.

A worker writes each task transition once, as a task history record on the history
stream (:mod:`k1.events`); the ``task_event`` s (and ``task_completed``) the dashboard
shows are derived from those records here. Every web process reads the whole stream for
itself (``XREAD``, no consumer group: each has its own connections) and delivers each
record's events (:func:`k1.events.events_of`) to its own connections only, through the
manager's project scoping (:meth:`k1.web.realtime.ProjectScopedManager.emit_here`), never
back onto Redis.

It starts with the process's first Socket.IO connection, from the stream's newest record
at that moment (read before the connection is accepted: nothing that client causes is
missed; should Redis not answer then, from the newest record once it does). While Redis
cannot be reached it waits, backing off, and goes on after the last record it delivered,
so a dashboard gets the transitions of an outage late rather than never (the workers
keep the records through it, :data:`k1.events.MAX_KEPT_HISTORY`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from flask_socketio import SocketIO

from k1.events import events_of, rooms_for
from k1.history.stream import RECORD_FIELD, STREAM_KEY

log = logging.getLogger(__name__)

BATCH = 500  # records per read: a burst is drained in few round trips
BLOCK_MS = 5_000  # one read waits this long for records before it asks again
MIN_RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 5.0  # s between tries while Redis is unreachable


def newest_id(client: redis.Redis) -> str:
    """The id of the stream's newest record, ``0-0`` while it has none."""
    newest = client.xrevrange(STREAM_KEY, count=1)
    if not newest:
        return "0-0"
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def relay(socketio: SocketIO, client: redis.Redis, after: str | None) -> None:
    """Deliver every record's events after ``after`` (None: after the stream's newest
    record once Redis answers, never its past), for ever (a background task)."""
    manager: Any = socketio.server.manager  # k1.web.realtime.ProjectScopedManager
    delay = MIN_RETRY_DELAY
    while True:
        try:
            if after is None:
                after = newest_id(client)
            answer = client.xread({STREAM_KEY: after}, count=BATCH, block=BLOCK_MS)
        except redis.RedisError as exc:
            log.warning("task events not relayed, Redis unreachable (trying again in "
                        "%.1fs): %s", delay, exc)
            socketio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)
            continue
        delay = MIN_RETRY_DELAY
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                after = entry_id  # first: an entry that fails below is not read again
                try:
                    for name, event in _events(entry_id, fields):
                        manager.emit_here(name, event, rooms_for(event))
                except Exception:  # one bad entry never ends the relay
                    log.exception("history stream entry %s not relayed", entry_id)


def _events(entry_id: Any, fields: dict[Any, Any]) -> list[tuple[str, dict[str, Any]]]:
    raw = fields.get(RECORD_FIELD.encode())  # the relay's client returns bytes
    try:
        record = json.loads(raw) if raw is not None else None
    except ValueError as exc:
        record = exc
    if not isinstance(record, dict):  # not K1's record: skipped, never the relay
        log.warning("history stream entry %s skipped, not a record: %r", entry_id, record)
        return []
    return events_of(record)
