"""Pausing a queue: its messages stay in Redis, none starts, none is lost; resuming lets
the workers that consumed it take them again, in queue order.

Three layers, because a Celery control broadcast reaches only the workers listening at
that moment:

1. ``pause`` records the queue in Redis (``k1:flow:paused``) and the workers consuming
   it (``active_queues``), then broadcasts ``cancel_consumer``: they stop fetching from it.
2. A worker that starts while the queue is paused leaves it out of its consumers
   (``celeryd_after_setup``, the hook Celery documents for changing queues after ``-Q``)
   and adds itself to the queue's workers, so that ``resume`` reaches it too.
3. A K1 task fetched from a paused queue anyway (a countdown message a worker held when
   the pause came, a worker that missed the broadcast) is handed back to the queue
   instead of running (:func:`check_not_paused`; seen within 1 s of the pause).

``resume`` removes the flag, then broadcasts ``add_consumer`` to the queue's workers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import signals
from celery.exceptions import Reject

from k1.connections import get_redis
from k1.flow.limits import Refreshed
from k1.settings import QUEUE_NAME

log = logging.getLogger(__name__)

PAUSED_KEY = "k1:flow:paused"  # set of paused queue names
WORKERS_KEY = "k1:flow:paused:{}:workers"  # set: workers that consumed a paused queue
CONTROL_TIMEOUT = 2.0  # seconds a broadcast waits for the workers' replies
CONFIRM_TIMEOUT = 10.0  # seconds pause waits for every worker to have stopped consuming
TOLD_KEY = "k1:flow:paused:{}:told:{}"  # a worker that missed the pause was told to stop
TOLD_TTL = 2  # seconds: one cancel per worker and queue until it has surely acted on it


class InvalidQueue(ValueError):
    """Not a queue name (the API answers 400 naming ``queue``)."""


def checked_name(queue: str) -> str:
    if not QUEUE_NAME.match(queue):
        raise InvalidQueue("queue: 1 to 200 of A-Z a-z 0-9 _ . : -")
    return queue


def _read_paused() -> frozenset[str]:
    return frozenset(get_redis().smembers(PAUSED_KEY))


PAUSED = Refreshed(_read_paused)


def paused_queues() -> list[str]:
    return sorted(_read_paused())


def pause(queue: str) -> dict[str, Any]:
    """Pause ``queue`` on every worker; returns the workers that were consuming it."""
    from k1.celery import app

    checked_name(queue)
    consuming = _consumers_of(app, queue)
    client = get_redis()
    pipe = client.pipeline()
    pipe.sadd(PAUSED_KEY, queue)
    if consuming:
        pipe.sadd(WORKERS_KEY.format(queue), *consuming)
    pipe.execute()
    app.control.cancel_consumer(queue, reply=True, timeout=CONTROL_TIMEOUT)
    # A worker replies before its consumer acts on the command (call_soon): wait until
    # none lists the queue, so that "paused" means no fetch from it has just been made.
    deadline = time.monotonic() + CONFIRM_TIMEOUT
    while consuming and time.monotonic() < deadline:
        consuming = _consumers_of(app, queue)
    if consuming:
        log.warning("queue %s: %s still consuming after the pause; the tasks they fetch "
                    "are handed back", queue, ", ".join(consuming))
    workers = sorted(client.smembers(WORKERS_KEY.format(queue)))
    log.warning("queue %s paused (workers: %s)", queue, ", ".join(workers) or "none")
    return {"queue": queue, "paused": True, "workers": workers}


def resume(queue: str) -> dict[str, Any]:
    """Resume ``queue`` on the workers that consumed it when it was paused."""
    from k1.celery import app

    checked_name(queue)
    client = get_redis()
    client.srem(PAUSED_KEY, queue)  # first: a worker starting from now on consumes it
    workers = sorted(client.smembers(WORKERS_KEY.format(queue)))
    if workers:
        app.control.add_consumer(queue, destination=workers, reply=True,
                                 timeout=CONTROL_TIMEOUT)
    client.delete(WORKERS_KEY.format(queue))
    log.warning("queue %s resumed (workers: %s)", queue, ", ".join(workers) or "none")
    return {"queue": queue, "paused": False, "workers": workers}


def _consumers_of(app: Any, queue: str) -> list[str]:
    replies = app.control.inspect(timeout=CONTROL_TIMEOUT).active_queues() or {}
    return sorted(host for host, queues in replies.items()
                  if any(q.get("name") == queue for q in queues or ()))


def check_not_paused(request: Any) -> None:
    """Hand a task fetched from a paused queue back to that queue (Kombu puts a requeued
    message at the back: it waits behind what was queued before it)."""
    queue = (request.delivery_info or {}).get("routing_key")
    try:
        paused = queue is not None and queue in PAUSED.current()
    except redis.RedisError as exc:  # the broker is Redis too: it is likely back soon
        log.warning("paused queues unreadable (%s); running the task", exc)
        return
    if paused and queue is not None:
        _stop_consuming(request.hostname, queue)
        raise Reject(f"queue {queue} is paused", requeue=True)


def _stop_consuming(worker: str | None, queue: str) -> None:
    """A worker fetching from a paused queue missed the pause: stop it consuming the queue.

    Otherwise it takes the handed-back message again at once, and hands it back again,
    about a hundred times a second, until the resume. The worker joins the queue's
    workers so that the resume reaches it; its cancel goes out first and the flag is read
    again after joining, so that a resume racing this either finds the worker in its list
    (and its add_consumer comes after the cancel) or is seen here (and the worker adds
    itself back).
    """
    from k1.celery import app

    if not worker:
        return
    try:
        client = get_redis()
        if not client.set(TOLD_KEY.format(queue, worker), 1, nx=True, ex=TOLD_TTL):
            return  # told already, and not yet acted on
        app.control.cancel_consumer(queue, destination=[worker])
        client.sadd(WORKERS_KEY.format(queue), worker)
        if not client.sismember(PAUSED_KEY, queue):
            app.control.add_consumer(queue, destination=[worker])
        log.warning("queue %s is paused but %s was consuming it; told it to stop", queue,
                    worker)
    except Exception as exc:  # the hand-back itself must happen: the task is not lost
        log.warning("could not stop %s consuming paused queue %s (%s)", worker, queue, exc)


@signals.celeryd_after_setup.connect
def _honour_pauses(sender: str, instance: Any, **_: Any) -> None:
    """A worker starting while a queue it would consume is paused leaves it out."""
    try:
        paused = _read_paused()
        selected = set(instance.app.amqp.queues.consume_from or instance.app.amqp.queues)
        for queue in sorted(paused & selected):
            # Recorded before the flag is read again, so that a resume racing this
            # start either finds the flag gone here or this worker in its list.
            get_redis().sadd(WORKERS_KEY.format(queue), sender)
            if get_redis().sismember(PAUSED_KEY, queue):
                instance.app.amqp.queues.deselect(queue)
                log.warning("queue %s is paused: not consuming it until resumed", queue)
    except Exception as exc:  # a worker must start even if Redis is away
        log.warning("could not read paused queues at start (%s); consuming all", exc)
