"""Prometheus series of flow control, fleet-wide: the waits limits cause, and each limit's
use now. Workers count every wait in Redis (:func:`record_wait`, one pipeline of two
increments, from ``K1Task`` when it re-enqueues a task over a limit); the web process
exports the counts and the live use at ``GET /metrics`` (:class:`Collector`)::

    k1_limit_waits_total{limit="analysis",kind="concurrency"}   # tasks sent to wait
    k1_limit_wait_seconds_total{limit="analysis",kind="rate"}   # the waits' countdowns
    k1_limit_running{limit="analysis"}                           # slots in use, all keys
    k1_limit_saturated_keys{limit="analysis"}                    # keys with every slot taken

No series is labelled by key: keys are projects or argument values, as many as the
users make (``GET /api/limits`` lists them). A wait of a ``limiter()`` inside a task counts
under the limiter's name; a ``limiter()`` raising outside a task is not a wait.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from k1.connections import get_redis
from k1.flow.gate import KIND_CONCURRENCY, KIND_RATE, LimitExceeded

log = logging.getLogger(__name__)

WAITS_KEY = "k1:metrics:limit:waits"  # hash: "<limit>|<kind>" -> tasks sent to wait
WAITED_KEY = "k1:metrics:limit:wait_seconds"  # hash: "<limit>|<kind>" -> their countdowns
SEPARATOR = "|"  # never in a limit's name (k1.flow.limits.NAME)


def record_wait(refusal: LimitExceeded, countdown: float,
                client: redis.Redis | None = None) -> None:
    """Count one wait of ``countdown`` seconds caused by ``refusal``'s limit. A Redis error
    is logged, not raised: losing a count must not stop the task from waiting."""
    field = f"{refusal.name}{SEPARATOR}{refusal.kind}"
    try:
        pipe = (client or get_redis()).pipeline(transaction=False)
        pipe.hincrby(WAITS_KEY, field, 1)
        pipe.hincrbyfloat(WAITED_KEY, field, countdown)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("limit %s: wait not counted (%s)", refusal.name, exc)


def forget_waits(name: str, client: redis.Redis | None = None) -> None:
    """Drop the counts of a deleted limit, so that its series leave ``/metrics``."""
    fields = [f"{name}{SEPARATOR}{kind}" for kind in (KIND_CONCURRENCY, KIND_RATE)]
    pipe = (client or get_redis()).pipeline(transaction=False)
    pipe.hdel(WAITS_KEY, *fields)
    pipe.hdel(WAITED_KEY, *fields)
    pipe.execute()


class Collector:
    """The flow series for one scrape (register it in a ``CollectorRegistry``).
    ``limits``: :func:`k1.flow.admin.overview` (each limit in force with its ``usage``)."""

    def __init__(self, limits: list[dict[str, Any]], client: redis.Redis | None = None) -> None:
        self.limits, self.client = limits, client or get_redis()

    def collect(self) -> Iterable[Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(WAITS_KEY)
        pipe.hgetall(WAITED_KEY)
        waits, waited = pipe.execute()
        counts = CounterMetricFamily(
            "k1_limit_waits", "Times a task was re-enqueued to wait because a limit refused "
            "it, by limit and by the part that refused (concurrency or rate)",
            labels=["limit", "kind"])
        seconds = CounterMetricFamily(
            "k1_limit_wait_seconds", "Seconds tasks were set to wait by limits (the "
            "countdowns they were re-enqueued with), by limit and kind",
            labels=["limit", "kind"])
        for family, values in ((counts, waits), (seconds, waited)):
            for field, value in sorted(values.items()):
                name, _, kind = field.rpartition(SEPARATOR)
                family.add_metric([name, kind], float(value))
            yield family

        running = GaugeMetricFamily(
            "k1_limit_running", "Concurrency slots of the limit in use now, over all its keys",
            labels=["limit"])
        saturated = GaugeMetricFamily(
            "k1_limit_saturated_keys", "Keys of the limit whose slots are all taken now "
            "(a task found none free)", labels=["limit"])
        for limit in self.limits:
            usage = limit["usage"]
            if limit["concurrency"] is not None:
                running.add_metric([limit["name"]], sum(u["running"] or 0 for u in usage))
                saturated.add_metric([limit["name"]], sum(1 for u in usage if u["saturated"]))
        yield running
        yield saturated
