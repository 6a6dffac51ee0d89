"""Celery signal handlers: every task transition becomes one ``task_event``.

Imported by the worker (``celeryconfig.imports``); each handler builds the one event
schema and captures it as the transition's task history record
(:func:`k1.history.capture.capture`), never an exception: the record is the one write,
from which the web processes derive the ``task_event`` (and ``task_completed``) and the
recorder the task's history (:mod:`k1.events`). ``K1_TASK_EVENTS=off`` leaves them
unconnected.

=========  =========================  =========  ============================
type       signal                     state      process
=========  =========================  =========  ============================
received   task_received              RECEIVED   pool child (main if ETA)
started    task_prerun                STARTED    pool child
retried    before_task_publish        RETRY      pool child
succeeded  before_result_stored (K1)  SUCCESS    pool child (+ task_completed)
failed     task_failure               FAILURE    pool child
failed     task_revoked               REVOKED    worker main
=========  =========================  =========  ============================

Publishing is off the task's path (:mod:`k1.events` buffers; the process's next result
write or a background thread sends), and the records of one task still reach the stream
in order:

- ``received`` happens in the worker's main process, the next events in a pool child.
  When the task goes to the pool at once, ``received`` is not published by the main
  process but handed to the child with the request (``RECEIVED_EVENT`` in its request
  dict) and captured by the child just before ``started``: one process, one order. A
  task with an ETA or countdown waits in the main process, which sends its ``received``
  at once and waits for the round trip (rare: retries and scheduled tasks).
- ``retried`` is sent when the retry message is *published*, and the child waits for
  that round trip: the retry's own ``received`` (main process) comes after it. Not on
  ``task_retry``, which fires after the message is on the broker, so the retry's
  ``received`` could overtake it.
- ``succeeded`` is captured as the SUCCESS result is about to be written
  (:data:`k1.celery.before_result_stored`), not on ``task_success``, which fires after
  the write: the record rides the write's round trip (:class:`k1.celery.ResultBackend`),
  as ``received`` and ``started`` ride STARTED's. A task whose result is not stored
  (``ignore_result``) has it captured on ``task_success``.
- The child's other records go through its buffer, in order. A breaker deferral is a
  ``retried`` with ``deferred: true``. ``dead`` comes from ``K1Task.on_failure``
  (:mod:`k1.recovery`) through the same buffer; Celery runs it before ``task_failure``,
  so a dead task's ``dead`` precedes its ``failed``.

The worker's Celery heartbeats are kept too (:func:`on_heartbeat`, whatever
``K1_TASK_EVENTS`` says: they are the fleet's view, not task events).

A pool process sends its buffer when it shuts down (``worker_process_shutdown``, trying
for up to ``EXIT_FLUSH_TIMEOUT`` to send history records kept through a Redis outage); one
killed outright loses what it had not sent yet (a few milliseconds of events).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from celery import Task, current_task, signals

from k1 import headers as k1_headers
from k1.celery import before_result_stored
from k1.events import EXIT_FLUSH_TIMEOUT, HEARTBEAT, flush, make_event, publish
from k1.history import capture as history
from k1.settings import get_settings

MAX_TEXT = 500  # characters of an exception message or result kept in an event
# Request-dict key carrying a task's unpublished ``received`` event from the worker's main
# process to the pool child that runs it (not a message header: it never leaves the worker).
RECEIVED_EVENT = "k1_received_event"

_started_at: dict[str, float] = {}  # task id -> monotonic start, in this pool process
_success_captured: set[str] = set()  # tasks whose success was captured before its result


def _task_fields(task: Task) -> dict[str, Any]:
    request = task.request
    return {
        "task_id": request.id, "task_name": task.name, "project_id": k1_headers.project_of(task),
        "user_id": request.get(k1_headers.USER), "attempt": _attempt(task),
        "worker": request.hostname,
    }


def _attempt(task: Task) -> int:
    # K1Task does not count breaker deferrals as attempts; other tasks count retries.
    attempt = getattr(task, "attempt", None)
    return attempt() if callable(attempt) else (task.request.retries or 0) + 1


def _request_fields(request: Any) -> dict[str, Any]:
    """Fields of a worker-side ``celery.worker.request.Request`` (not yet running), or of
    the task ``Context`` Celery builds from one (``task_revoked`` passes that), which
    carries the message headers as its own fields."""
    headers = getattr(request, "request_dict", None)
    if headers is None:  # a Context
        headers, task_name = vars(request), request.task
    else:
        task_name = request.task_name
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    return {
        "task_id": request.id, "task_name": task_name,
        "project_id": k1_headers.project_from(kwargs, headers),
        "user_id": headers.get(k1_headers.USER),
        "attempt": (headers.get("retries") or 0) - (headers.get(k1_headers.DEFERRALS) or 0) + 1,
        "worker": getattr(request, "hostname", None),
    }


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def _runtime_ms(task_id: str | None) -> float | None:
    started = _started_at.get(task_id or "")
    return None if started is None else round((time.monotonic() - started) * 1000, 2)


def on_received(sender: Any = None, request: Any = None, **_: Any) -> None:
    event = make_event("received", state="RECEIVED", eta=request.eta,
                       **_request_fields(request))
    if request.eta:
        request.request_dict.pop(RECEIVED_EVENT, None)
        # Sent now: before its start, which another process records.
        history.capture(history.received(event, request), wait=True)
    else:
        request.request_dict[RECEIVED_EVENT] = event  # published by the child, before started


def on_prerun(sender: Task | None = None, task_id: str | None = None,
              task: Task | None = None, **_: Any) -> None:
    if task is None:
        return
    _started_at[task_id or ""] = time.monotonic()
    received = _take_received(task)
    started = history.record(make_event("started", state="STARTED", **_task_fields(task)))
    if isinstance(received, dict):
        history.capture(history.received(received, task.request), started)
    else:
        history.capture(started)


def _take_received(task: Task) -> Any:
    """The ``received`` event the main process handed over, removed from the request: Celery
    counts unknown request keys as custom headers, which a retry would carry along."""
    request = task.request
    if isinstance(request.headers, dict):
        request.headers.pop(RECEIVED_EVENT, None)
    return vars(request).pop(RECEIVED_EVENT, None)


def on_postrun(task_id: str | None = None, **_: Any) -> None:
    _started_at.pop(task_id or "", None)
    _success_captured.discard(task_id or "")


def on_result_stored(task_id: str | None = None, result: Any = None, state: str | None = None,
                     **_: Any) -> None:
    """A running task's success, captured as its result is about to be stored, so that the
    record rides the SUCCESS write (:class:`k1.celery.ResultBackend`)."""
    task = current_task  # a proxy: false outside a running task
    if state != "SUCCESS" or not task or task_id is None or task.request.id != task_id:
        return
    if task_id not in _success_captured:  # a write Celery tries again is captured once
        _success_captured.add(task_id)
        _capture_success(task, result)


def on_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if sender is None:
        return
    if sender.request.id in _success_captured:
        _success_captured.discard(sender.request.id)
    else:  # a result not stored (ignore_result)
        _capture_success(sender, result)


def _capture_success(task: Task, result: Any) -> None:
    history.capture(history.record(make_event(
        "succeeded", state="SUCCESS", runtime_ms=_runtime_ms(task.request.id),
        result=_short(result), **_task_fields(task))))


def on_failure(sender: Task | None = None, exception: BaseException | None = None,
               **_: Any) -> None:
    if sender is None:
        return
    event = make_event(
        "failed", state="FAILURE", runtime_ms=_runtime_ms(sender.request.id),
        exception=type(exception).__name__, message=_short(str(exception)),
        **_task_fields(sender),
    )
    history.capture(history.record(event))


def on_retry_published(sender: str | None = None, headers: dict[str, Any] | None = None,
                       **_: Any) -> None:
    """A running task re-publishing itself with more retries is retrying."""
    task = current_task  # a proxy: false outside a running task
    headers = headers or {}
    if not task or headers.get("id") != task.request.id:
        return
    if (headers.get("retries") or 0) <= (task.request.retries or 0):
        return
    exc = sys.exc_info()[1]  # K1Task retries from inside its except block
    deferrals_before = task.request.get(k1_headers.DEFERRALS) or 0
    deferred = (headers.get(k1_headers.DEFERRALS) or 0) > deferrals_before
    event = make_event(
        "retried", state="RETRY", runtime_ms=_runtime_ms(task.request.id),
        exception=type(exc).__name__ if exc else None,
        message=_short(str(exc)) if exc else None, eta=headers.get("eta"),
        deferred=deferred, **_task_fields(task),
    )
    # Sent now: before the retry's received, which the main process records.
    history.capture(history.record(event), wait=True)


def on_revoked(sender: Any = None, request: Any = None, terminated: bool = False,
               expired: bool = False, **_: Any) -> None:
    if request is None:
        return
    reason = "expired" if expired else "terminated" if terminated else "revoked"
    # ``request`` is the task's Context (Celery 5.7), built from the worker's request
    # dict. Revoked or expired before a pool child took it, the received event handed to
    # the child is still in it, unpublished; a terminated run's child published it.
    received = None if terminated else request.get(RECEIVED_EVENT)
    if isinstance(received, dict):
        history.capture(history.received(received, request))
    history.capture(history.record(make_event(
        "failed", state="REVOKED", exception="Revoked", message=reason,
        **_request_fields(request))))


def on_superseded(task: Task, reason: str) -> None:
    """A run that did not happen: another task holds its unique key (:mod:`k1.flow.unique`
    marks it revoked; no Celery signal says so)."""
    if not get_settings().task_events:
        return
    history.capture(history.record(make_event(
        "failed", state="REVOKED", exception="Superseded", message=_short(reason),
        runtime_ms=_runtime_ms(task.request.id), **_task_fields(task))))


def on_heartbeat(sender: Any = None, **_: Any) -> None:
    """Keep the heartbeat Celery's ``Heart`` (``sender``) is sending (k1.events.heartbeats).

    The signal does not say which event it precedes: ``worker-online`` and
    ``worker-offline`` are both sent while the Heart has no timer (before it starts one, after
    it cancelled it), heartbeats while it has one.
    """
    from celery.worker.state import active_requests, all_total_count

    if sender is None:
        return
    beating = getattr(sender, "k1_beating", False)
    offline = beating and sender.tref is None
    sender.k1_beating = not offline
    publish([(HEARTBEAT, {
        "hostname": sender.eventer.hostname, "ts": time.time(), "freq": sender.interval,
        "active": len(active_requests), "processed": all_total_count[0],
        "pid": os.getpid(), "offline": offline,
    })])


def on_process_shutdown(**_: Any) -> None:
    flush(EXIT_FLUSH_TIMEOUT)  # a pool process ends with os._exit: atexit would not run


def connect() -> bool:
    """Connect the handlers unless ``K1_TASK_EVENTS=off``; True when connected."""
    if not get_settings().task_events:
        return False
    signals.task_received.connect(on_received, weak=False)
    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_success.connect(on_success, weak=False)
    before_result_stored.connect(on_result_stored, weak=False)
    signals.task_failure.connect(on_failure, weak=False)
    signals.before_task_publish.connect(on_retry_published, weak=False)
    signals.task_revoked.connect(on_revoked, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)
    return True


connect()
signals.heartbeat_sent.connect(on_heartbeat, weak=False)
