"""Capture: every task transition becomes one record on a Redis Stream.

A worker pays one ``XADD`` per transition and no database call; the recorder
(:mod:`k1.history.recorder`) moves the records into PostgreSQL in batches::

    capture(record(event))            # now, on its own round trip; never raises
    add(pipe, record(event))          # queued on a pipeline the caller executes

A record is the transition's ``task_event`` (:func:`k1.events.make_event`: type, task_id,
task_name, project_id, user_id, state, attempt, ts, worker...) plus, for ``submitted``
and ``received``, the arguments and links (queue, schedule, replay_of, workflow_id,
conductor_task_id) and, for every record, a random ``id`` that makes a second delivery
of the same record a no-op in the database. Types: the ``task_event`` types plus
``submitted`` (:func:`k1.tasks.submissions.send`) and ``lost`` (a pool process died
under the attempt and Celery gave the message back to the queue,
:class:`k1.history.worker.LostRequest`).
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

from k1 import headers as k1_headers
from k1.settings import get_settings

log = logging.getLogger(__name__)

STREAM_KEY = "k1:history:stream"
# The stream holds what waits for the recorder: it must outlast a recorder or database
# outage of minutes. 1,000,000 records is about 30 minutes at 100 tasks/s (six records a
# task) and at most ~2.5 GB of Redis with every record at its bound (ARGS_LIMIT twice),
# ~250 MB with ordinary ones. Approximate trimming (MAXLEN ~) costs nothing per XADD.
STREAM_MAXLEN = 1_000_000
ARGS_LIMIT = 1_000  # characters of a record's JSON args (and kwargs); the rest is cut
CAPTURE_TIMEOUT = 0.5  # seconds; Redis answers an XADD in well under a millisecond
PAUSE_AFTER_FAILURE = 5.0  # seconds without capturing after a failure: tasks stay fast
RECORD_FIELD = "r"  # the stream entry's one field: the record as JSON
TRUNCATED = "…[truncated]"  # appended to cut arguments, so nobody mistakes them for whole


def record(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The history record of a ``task_event`` (with ``extra`` fields)."""
    return {**event, **extra, "id": uuid.uuid4().hex}


def arguments(args: Any, kwargs: Any) -> dict[str, Any]:
    """``args`` and ``kwargs`` bounded to :data:`ARGS_LIMIT` characters of JSON each."""
    return {"args": _bounded(args if args is not None else []),
            "kwargs": _bounded(kwargs if kwargs is not None else {})}


def links(headers: Any) -> dict[str, Any]:
    """The links a task's K1 headers carry (schedule, replay, Conductor ids)."""
    get = headers.get if hasattr(headers, "get") else (lambda _key: None)
    return {"schedule": get(k1_headers.SCHEDULE), "replay_of": get(k1_headers.REPLAY_OF),
            "workflow_id": get(k1_headers.CONDUCTOR_WORKFLOW),
            "conductor_task_id": get(k1_headers.CONDUCTOR_TASK)}


def received(event: dict[str, Any], request: Any) -> dict[str, Any]:
    """The record of a worker request's ``received`` event: with arguments and links."""
    return record(event, queue=(request.delivery_info or {}).get("routing_key"),
                  **arguments(request.args, request.kwargs), **links(request.request_dict))


def submitted(task_id: str, task_name: str, args: Any, kwargs: Any, *,
              project_id: str | None, user_id: str | None, headers: dict[str, Any] | None,
              ts: float, queue: str | None = None) -> dict[str, Any]:
    """The record of a submission; ``ts`` is taken before the task is sent, so that the
    queue wait (first start minus submission) is never negative.
    """
    event = {"type": "submitted", "task_id": task_id, "task_name": task_name,
             "project_id": project_id, "user_id": user_id, "state": "PENDING",
             "attempt": None, "ts": ts}  # a task_event's fields (k1.events.make_event)
    return record(event, queue=queue, **arguments(args, kwargs), **links(headers or {}))


def _bounded(value: Any) -> Any:
    text = json.dumps(value, default=repr)
    if len(text) <= ARGS_LIMIT:
        return json.loads(text)  # JSON-safe (tuples as lists, objects as their repr)
    return text[:ARGS_LIMIT] + TRUNCATED


def add(pipe: Any, record: dict[str, Any]) -> None:
    """Queue the ``XADD`` of ``record`` on ``pipe`` (a redis-py pipeline)."""
    pipe.xadd(STREAM_KEY, {RECORD_FIELD: json.dumps(record, default=str)},
              maxlen=STREAM_MAXLEN, approximate=True)


def capture(record: dict[str, Any]) -> bool:
    """``XADD`` ``record`` now; False (and a warning) when Redis is unreachable, and False
    when ``K1_TASK_HISTORY=off``.
    """
    capturer = _capturer()
    return capturer is not None and capturer.capture(record)


class _Capturer:
    """A Redis client that fails fast and then stops trying for a while, like the events'
    publisher: a task must never fail, nor wait long, because history is away.
    """

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(
            url, socket_timeout=CAPTURE_TIMEOUT, socket_connect_timeout=CAPTURE_TIMEOUT,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
        )
        self.paused_until = 0.0
        self.lock = threading.Lock()  # one XADD at a time keeps a process's order

    def capture(self, record: dict[str, Any]) -> bool:
        if time.monotonic() < self.paused_until:
            return False
        try:
            with self.lock:
                pipe = self.redis.pipeline(transaction=False)
                add(pipe, record)
                pipe.execute()
        except Exception as exc:  # history must never fail a task
            self.paused_until = time.monotonic() + PAUSE_AFTER_FAILURE
            log.warning("history record %s/%s not captured (pausing %.0fs): %s",
                        record.get("type"), record.get("task_id"), PAUSE_AFTER_FAILURE, exc)
            return False
        return True


@functools.cache
def _capturer() -> _Capturer | None:
    settings = get_settings()
    return _Capturer(settings.redis_url) if settings.task_history else None
