"""Capture: every task transition becomes one record on a Redis Stream.

The record is the transition's one write: the recorder stores it as history, and every
web process derives the transition's Socket.IO events from it (:func:`k1.events.events_of`).

A worker pays no database call and no round trip of its own per transition: a record
rides the event publisher's buffer (:mod:`k1.events`), whose background flusher sends it
in the same pipelined round trip as the events beside it; the recorder
(:mod:`k1.history.recorder`) moves the records into PostgreSQL in batches::

    capture(record(event))            # buffered with the events; never raises
    add(pipe, record(event))          # queued on a pipeline the caller executes (beat)

A record is the transition's ``task_event`` (:func:`k1.events.make_event`: type, task_id,
task_name, project_id, user_id, state, attempt, ts, worker...) plus, for ``submitted``
and ``received``, the arguments and links (queue, schedule, replay_of, replay_edited,
workflow_id, conductor_task_id) and, for every record, a random ``id`` that makes a second delivery
of the same record a no-op in the database. Types: the ``task_event`` types plus
``submitted`` (:func:`k1.tasks.submissions.send`) and ``lost`` / ``requeued`` (the worker
gave the message back to the queue, :class:`k1.history.worker.HandBackRequest`).

A Redis outage never makes a task fail or wait for history, and loses no record: the
publisher drops the live events for its pause after a failure but keeps the history
records (bounded, :data:`k1.events.MAX_KEPT_HISTORY`) and sends them, in order, once Redis
answers again, or as its process exits. A process killed outright loses what it had not
sent yet (a few milliseconds). What reached the stream is never lost.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from k1 import events
from k1 import headers as k1_headers
from k1.history.stream import add

__all__ = ["add", "arguments", "capture", "links", "received", "record", "submitted"]

ARGS_LIMIT = 1_000  # characters of a record's JSON args (and kwargs); the rest is cut
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
            "replay_edited": get(k1_headers.REPLAY_EDITED),
            "workflow_id": get(k1_headers.CONDUCTOR_WORKFLOW),
            "conductor_task_id": get(k1_headers.CONDUCTOR_TASK)}


def received(event: dict[str, Any], request: Any) -> dict[str, Any]:
    """The record of a ``received`` event, with the queue, arguments and links of
    ``request``: the worker's ``Request`` (main process) or the running task's request
    context (pool child), which carries the message headers as its own fields.
    """
    headers = getattr(request, "request_dict", request)
    return record(event, queue=(request.delivery_info or {}).get("routing_key"),
                  **arguments(request.args, request.kwargs), **links(headers))


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


def capture(*records: dict[str, Any], wait: bool = False) -> bool:
    """Put ``records`` in this process's event buffer, in order, sent by the publisher's
    flusher (``wait``: now, in this thread, with what is buffered before them). A
    transition's record is also its live event: the web processes derive the
    ``task_event`` from it (:func:`k1.events.events_of`). False when one was dropped
    (buffer full), and with ``wait`` when they were not sent (Redis unreachable: they are
    kept and sent later).
    """
    return events.publish([(events.HISTORY, record) for record in records], wait=wait)
