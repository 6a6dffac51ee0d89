"""The fleet at a glance: the workers online and what they run, and the queues' traffic.

Workers come from two of Celery's sources:

- **Heartbeats** (:mod:`k1.events.heartbeats`): who is online, when each was last heard
  of, how many tasks it runs and has processed; fresh within 2 s, and read without asking
  the workers anything.
- **One inspect broadcast** of :func:`k1_fleet` (K1's inspect command: pool, concurrency,
  active tasks, queues consumed, in one reply per worker), addressed to the workers
  online and ended as soon as they all replied. Its answer is cached in Redis for every
  web process, and a lock taken with ``SET NX EX INSPECT_INTERVAL`` lets one broadcast
  go out per :data:`INSPECT_INTERVAL` at most, however many pages and processes ask:
  a page load never broadcasts to the fleet by itself. A worker that came online since
  is listed from its heartbeat, without the inspect's details until the next one.

    workers(projects=None)   # operators: every active task; else only those projects'
    queues(paused)           # every queue's depth, oldest message's age, rates
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from celery.worker.control import inspect_command
from prometheus_client.core import GaugeMetricFamily

from k1 import broker
from k1 import headers as k1_headers
from k1.connections import get_redis
from k1.events import heartbeats

INSPECT_KEY = "k1:fleet:inspect"  # the last inspect's replies, with their time (JSON)
INSPECT_LOCK = "k1:fleet:inspect:lock"  # held for INSPECT_INTERVAL by whoever broadcast
INSPECT_INTERVAL = 5.0  # seconds: at most one broadcast to the fleet per this, fleet-wide
INSPECT_TIMEOUT = 2.0  # seconds a broadcast waits for a worker that does not reply
RATE_WINDOW = 60  # seconds the enqueue and dequeue rates are measured over
COMMAND = "k1_fleet"


@inspect_command()
def k1_fleet(state: Any) -> dict[str, Any]:
    """K1's fleet view of this worker: pool, concurrency, active tasks, queues consumed."""
    from celery.worker import state as worker_state

    pool = state.consumer.controller.stats().get("pool") or {}
    consumer = state.consumer.task_consumer
    return {
        "pool": _pool_name(pool.get("implementation")),
        "concurrency": pool.get("max-concurrency"),
        "active": [_active(request) for request in list(worker_state.active_requests)],
        "queues": sorted(q.name for q in consumer.queues) if consumer else [],
    }


def _pool_name(implementation: Any) -> str | None:
    """"celery.concurrency.prefork:TaskPool" -> "prefork"."""
    if not isinstance(implementation, str):
        return None
    return implementation.split(":")[0].rsplit(".", 1)[-1]


def _active(request: Any) -> dict[str, Any]:
    return {"id": request.id, "name": request.task_name,
            "project_id": k1_headers.project_from(request.kwargs, request.request_dict),
            "queue": (request.delivery_info or {}).get("routing_key"),
            "started_at": request.time_start, "worker_pid": request.worker_pid}


def inspected(online: list[str], client: redis.Redis | None = None) -> dict[str, Any]:
    """The last inspect's replies ``{"at", "workers": {hostname: reply}}``, broadcast again
    to ``online`` when older than :data:`INSPECT_INTERVAL` and nobody else is doing it."""
    from k1.celery import app

    client = client or get_redis()
    cached = _cached(client)
    if cached and time.time() - cached["at"] < INSPECT_INTERVAL:
        return cached
    # The answer is dated from before the lock is taken, not from when the replies are in:
    # once the lock has expired the answer is stale too, and the next caller broadcasts.
    asked_at = time.time()
    if not client.set(INSPECT_LOCK, uuid.uuid4().hex, nx=True, px=int(INSPECT_INTERVAL * 1000)):
        return cached or _wait_for_other(client)
    replies: dict[str, Any] = {}
    if online:
        for reply in app.control.broadcast(COMMAND, destination=online, reply=True,
                                           timeout=INSPECT_TIMEOUT, limit=len(online)) or ():
            replies.update(reply)
    fresh = {"at": asked_at, "workers": {host: r for host, r in replies.items()
                                           if isinstance(r, dict)}}
    client.set(INSPECT_KEY, json.dumps(fresh))
    return fresh


def _cached(client: redis.Redis) -> dict[str, Any] | None:
    raw = client.get(INSPECT_KEY)
    try:
        cached = json.loads(raw) if raw else None
    except ValueError:
        return None
    return cached if isinstance(cached, dict) and "at" in cached else None


def _wait_for_other(client: redis.Redis) -> dict[str, Any]:
    """The first inspect ever is under way in another process: its answer, or none."""
    deadline = time.monotonic() + INSPECT_TIMEOUT + 1
    while time.monotonic() < deadline:
        cached = _cached(client)
        if cached:
            return cached
        time.sleep(0.1)
    return {"at": None, "workers": {}}


def workers(projects: set[str] | None = None,
            client: redis.Redis | None = None) -> dict[str, Any]:
    """Every worker online. ``projects``: the caller's projects (None: an operator); the
    active tasks of others, and platform tasks (no project), are left out for them."""
    client = client or get_redis()
    now = time.time()
    beats = heartbeats.online(client, now)
    inspect = inspected([beat["hostname"] for beat in beats], client)
    listed = []
    for beat in beats:
        detail = inspect["workers"].get(beat["hostname"]) or {}
        active = [dict(task, runtime_s=_runtime(task.get("started_at"), now))
                  for task in detail.get("active") or ()
                  if projects is None or task.get("project_id") in projects]
        listed.append({
            "hostname": beat["hostname"], "pid": beat.get("pid"),
            "last_heartbeat": beat["ts"], "heartbeat_age_s": round(max(0.0, now - beat["ts"]), 3),
            "active_count": beat.get("active"), "processed": beat.get("processed"),
            "pool": detail.get("pool"), "concurrency": detail.get("concurrency"),
            "queues": detail.get("queues"), "active": active,
        })
    return {"workers": listed, "inspected_at": inspect["at"]}


def _runtime(started_at: Any, now: float) -> float | None:
    return round(max(0.0, now - started_at), 3) if isinstance(started_at, int | float) else None


def consumed_queues(client: redis.Redis | None = None) -> set[str]:
    """The queues the workers online consume, from the cached inspect."""
    client = client or get_redis()
    online = [beat["hostname"] for beat in heartbeats.online(client)]
    found: set[str] = set()
    for host, reply in inspected(online, client)["workers"].items():
        if host in online:
            found.update(reply.get("queues") or ())
    return found


def queue_names(paused: set[str], client: redis.Redis | None = None) -> list[str]:
    """The queues to show: configured (``task_queues``), consumed by a worker, paused."""
    from k1.celery import app

    return sorted(set(app.amqp.queues) | consumed_queues(client) | paused)


def queues(paused: set[str], client: redis.Redis | None = None,
           now: float | None = None) -> list[dict[str, Any]]:
    """Each queue: messages waiting (every priority list, and every project's sub-queue of
    a fair queue), the oldest one's age, and the enqueue and dequeue rates (per second)
    over the last :data:`RATE_WINDOW` seconds, from the broker transport's counters
    (k1.broker), in two round trips (the fair queues' rings, then the lists)."""
    client = client or get_redis()
    now = time.time() if now is None else now
    names = queue_names(paused, client)
    if not names:
        return []
    current = broker.rate_bucket(now)
    buckets = range(current - RATE_WINDOW // broker.RATE_BUCKET, current + 1)
    # The window's start falls inside the oldest bucket: the part of its count that is
    # inside the window is taken as spread evenly over the bucket.
    oldest_part = ((buckets[1] * broker.RATE_BUCKET) - (now - RATE_WINDOW)) / broker.RATE_BUCKET
    weights = [max(0.0, min(1.0, oldest_part))] + [1.0] * (len(buckets) - 1)
    lists = broker.waiting_lists(client, names)
    pipe = client.pipeline(transaction=False)
    for name in names:
        for key in lists[name]:
            pipe.llen(key)
            pipe.lindex(key, -1)  # kombu pushes on the left, fetches from the right
    for bucket in buckets:
        pipe.hmget(broker.ENQUEUED.format(bucket), names)
        pipe.hmget(broker.DEQUEUED.format(bucket), names)
    replies = pipe.execute()
    answer, at = [], 0
    counts = replies[2 * sum(len(keys) for keys in lists.values()):]
    for index, name in enumerate(names):
        read, at = replies[at:at + 2 * len(lists[name])], at + 2 * len(lists[name])
        stamps = [_enqueued_at(tail) for tail in read[1::2] if tail is not None]
        known = [stamp for stamp in stamps if stamp is not None]
        enqueued = sum(w * int(c[index] or 0) for w, c in zip(weights, counts[0::2], strict=True))
        dequeued = sum(w * int(c[index] or 0) for w, c in zip(weights, counts[1::2], strict=True))
        answer.append({
            "queue": name, "depth": sum(read[0::2]), "paused": name in paused,
            "oldest_age_s": round(max(0.0, now - min(known)), 3) if known else None,
            "enqueue_rate": round(enqueued / RATE_WINDOW, 4),
            "dequeue_rate": round(dequeued / RATE_WINDOW, 4),
        })
    return answer


def _enqueued_at(raw: str | bytes) -> float | None:
    """A waiting message's publish time (k1.broker stamps it; None from another producer)."""
    try:
        stamp = json.loads(raw)["properties"][broker.ENQUEUED_AT]
    except (ValueError, KeyError, TypeError):
        return None
    return float(stamp) if isinstance(stamp, int | float) else None


class Collector:
    """The fleet's series for one scrape (register it in a ``CollectorRegistry``)::

        k1_queue_depth{queue="celery"}                          # messages waiting
        k1_queue_oldest_message_age_seconds{queue="celery"}     # 0 when none waits
        k1_queue_paused{queue="celery"}                         # 1 while paused
        k1_workers_online                                       # heartbeats not expired

    ``queues``: :func:`queues`; ``online``: how many workers are online."""

    def __init__(self, queues: list[dict[str, Any]], online: int) -> None:
        self.queues, self.online = queues, online

    def collect(self) -> Iterator[Any]:
        depth = GaugeMetricFamily("k1_queue_depth", "Messages waiting in the queue (every "
                                  "priority list and project), not yet fetched by a worker",
                                  labels=["queue"])
        age = GaugeMetricFamily("k1_queue_oldest_message_age_seconds", "Seconds the oldest "
                                "message waiting in the queue has waited (0: none waits)",
                                labels=["queue"])
        paused = GaugeMetricFamily("k1_queue_paused", "1 while the queue is paused",
                                   labels=["queue"])
        for queue in self.queues:
            depth.add_metric([queue["queue"]], queue["depth"])
            age.add_metric([queue["queue"]], queue["oldest_age_s"] or 0.0)
            paused.add_metric([queue["queue"]], 1.0 if queue["paused"] else 0.0)
        yield depth
        yield age
        yield paused
        yield GaugeMetricFamily("k1_workers_online", "Celery workers whose last heartbeat "
                                "has not expired", value=self.online)
