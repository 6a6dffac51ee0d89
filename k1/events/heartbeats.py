"""Celery's worker heartbeats, kept in Redis, for ``GET /api/workers`` and ``/metrics``.

A Celery worker sends a ``worker-heartbeat`` event every ``freq`` seconds (2 s), with its
active and processed counts. Nothing in K1 consumes Celery's event stream (it is a fanout:
each reader would need its own live subscription), so the worker keeps what it sends: on
Celery's ``heartbeat_sent`` signal (:func:`k1.events.signals.on_heartbeat`) the same
figures go into the event publisher's buffer as a :data:`k1.events.HEARTBEAT` entry, and
the flusher writes them here (:func:`add`) in its round trip: no round trip of their own,
and never on the worker's event loop. A worker going offline (Celery's ``worker-offline``)
removes its entry.

    online()     # [{"hostname", "ts", "freq", "active", "processed", "pid", ...}, ...]

A worker is online while its last heartbeat has not expired by Celery's own rule
(:func:`celery.events.state.heartbeat_expires`: twice its frequency), so a killed worker
leaves within 4 s.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from celery.events.state import heartbeat_expires

from k1.connections import get_redis

HEARTBEATS_KEY = "k1:fleet:heartbeats"  # hash: worker hostname -> its last heartbeat (JSON)
FORGET_AFTER = 3600  # seconds past expiry an entry is dropped: a killed worker says no bye


def add(pipe: redis.client.Pipeline, record: dict[str, Any]) -> None:
    """Queue the write of one heartbeat (``offline``: the worker's removal) on ``pipe``."""
    if record.get("offline"):
        pipe.hdel(HEARTBEATS_KEY, record["hostname"])
    else:
        pipe.hset(HEARTBEATS_KEY, record["hostname"], json.dumps(record))


def online(client: redis.Redis | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """The workers whose last heartbeat has not expired, by hostname."""
    client = client or get_redis()
    now = time.time() if now is None else now
    alive, forgotten = [], []
    for hostname, raw in client.hgetall(HEARTBEATS_KEY).items():
        try:
            beat = json.loads(raw)
            expires = heartbeat_expires(float(beat["ts"]), float(beat["freq"]))
        except (ValueError, KeyError, TypeError):
            forgotten.append(hostname)
            continue
        if now < expires:
            alive.append(beat)
        elif now > expires + FORGET_AFTER:
            forgotten.append(hostname)
    if forgotten:
        client.hdel(HEARTBEATS_KEY, *forgotten)
    return sorted(alive, key=lambda beat: beat["hostname"])
