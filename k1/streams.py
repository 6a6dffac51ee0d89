"""A consumer group on a Redis Stream, read through Redis outages.

The history recorder (:mod:`k1.history.recorder`) and the Conductor reporter
(:mod:`k1.conductor.reports`) each read a stream as one group of consumers::

    consume(client, STREAM, GROUP, step, stopping, what="history stream",
            min_delay=0.5, max_delay=15.0)

``step`` reads (or claims) and handles one batch; :func:`consume` calls it until
``stopping`` is set, creates the group first, and again when Redis came back without its
data (``NOGROUP``), and waits out a lost connection from ``min_delay`` seconds, doubling to
``max_delay``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (reading from its start) unless it exists."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def consume(client: redis.Redis, stream: str, group: str, step: Callable[[], Any],
            stopping: threading.Event, *, what: str, min_delay: float,
            max_delay: float) -> None:
    """Call ``step`` until ``stopping`` is set, through Redis outages (see the module)."""
    delay, grouped = min_delay, False
    while not stopping.is_set():
        try:
            if not grouped:
                ensure_group(client, stream, group)
                grouped = True
            step()
            delay = min_delay
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("%s unreachable (%s); retrying in %.1fs", what, first_line(exc), delay)
            if stopping.wait(delay):
                return
            delay = min(delay * 2, max_delay)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            grouped = False  # Redis came back without its data: make the group again


def first_line(exc: BaseException) -> str:
    """An exception's message for a one-line log: its first line, or its type's name."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
