"""The validation metrics: counters in Redis, fed by the events, read by the API.

Task counters are bumped in the same pipeline that writes the task transitions to the
history stream (:func:`count_transitions`, summed per batch by
:class:`k1.events.Publisher`), once per transition; Socket.IO delivery latency
comes from the dashboards, which report what they measured (:func:`record_latency`);
the other sources belong to their areas and are only read here, except the DLQ figures,
which the caller passes in (the web layer reads them from the DLQ store: this module sits
below the database)::

    report(dlq)           # {"window_s", "healthy", "metrics": [...], "series": [...]}
    prometheus_text()     # the same, and the raw counters, for GET /metrics

Every counter exists three times: all time (for Prometheus), per hour (the 24 h window
of the validation metrics) and per minute (the dashboard's charts). A metric without data
yet has the value None ("n/a") and ``met`` None.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from k1.connections import get_redis

WINDOW_HOURS = 24  # the validation metrics look at the last 24 h
SERIES_MINUTES = 60  # the dashboard's charts show the last hour, minute by minute
HOUR_TTL = (WINDOW_HOURS + 2) * 3600
MINUTE_TTL = (SERIES_MINUTES + 10) * 60
COUNTED_TYPES = ("received", "started", "retried", "succeeded", "failed", "dead")
DEFERRED = "deferred"  # counted apart from "retried" (see count_event)
# Delivery latency histogram bucket upper bounds, milliseconds (200 ms is the target).
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 75, 100, 150, 200, 300, 500, 1000, 2500, 5000, 10000)
MAX_LATENCY_MS = 600_000  # a sample above 10 min is a broken clock, not a latency
MAX_SAMPLES_PER_REPORT = 200  # a dashboard reports every few seconds, far fewer

KEY = "k1:metrics:{family}"  # all time
HOUR_KEY = "k1:metrics:{family}:h:{hour}"
MINUTE_KEY = "k1:metrics:{family}:m:{minute}"
# Written by the other areas (k1.scheduling.history, k1.recovery.breakers): plain counters.
SCHEDULE_DUE, SCHEDULE_ON_TIME = "k1:metrics:schedule:due", "k1:metrics:schedule:on_time"
BREAKER_CALLS, BREAKER_TRIPS = "k1:metrics:breaker:calls", "k1:metrics:breaker:trips"


# Every counter of a batch in one command: as separate HINCRBYs and EXPIREs (eight for a
# task's first two events) the counters were most of what a flush cost the worker, which
# packs each command in Python. KEYS: the counter hashes; ARGV, per key: its TTL (0: kept),
# its number of fields, then field, amount pairs. Sent with EVAL, not EVALSHA: a flush has
# no round trip to spare for reloading the script after a Redis restart, and Redis caches
# the compiled script by its hash anyway.
_COUNT = """
local a = 1
for _, key in ipairs(KEYS) do
  local ttl, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  for _ = 1, n do
    redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
    a = a + 2
  end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
"""


def count_transitions(pipe: redis.client.Pipeline, records: Iterable[dict[str, Any]]) -> None:
    """Queue the counter updates for task transitions (history records: those of a
    ``task_event`` type count, others such as ``submitted`` do not), summed per counter,
    as one command: a batch of a hundred transitions costs what one does.

    A breaker deferral (``retried`` with ``deferred``) is counted apart: it spends no
    attempt, so it is not a retry for the "average retry attempts" metric.
    """
    totals: dict[tuple[str, int | None], dict[str, int]] = {}
    for record in records:
        if record.get("type") in COUNTED_TYPES:
            kind = DEFERRED if record.get("deferred") else record["type"]
            for key_ttl in _keys("tasks", record.get("ts") or time.time()):
                fields = totals.setdefault(key_ttl, {})
                fields[kind] = fields.get(kind, 0) + 1
    if not totals:
        return
    args: list[str | int] = []
    for (_, ttl), fields in totals.items():
        args += [ttl or 0, len(fields)]
        for field, amount in fields.items():
            args += [field, amount]
    pipe.eval(_COUNT, len(totals), *(key for key, _ in totals), *args)


def record_latency(samples: Iterable[Any], client: redis.Redis | None = None) -> int:
    """Count delivery latency samples (milliseconds); returns how many were valid."""
    fields: dict[str, float] = {}
    valid = 0
    for sample in list(samples)[:MAX_SAMPLES_PER_REPORT]:
        if isinstance(sample, bool) or not isinstance(sample, int | float):
            continue
        if not math.isfinite(sample) or not 0 <= sample <= MAX_LATENCY_MS:
            continue
        bucket = _bucket_name(bisect.bisect_left(LATENCY_BUCKETS_MS, sample))
        fields[bucket] = fields.get(bucket, 0) + 1
        fields["sum_ms"] = fields.get("sum_ms", 0) + sample
        valid += 1
    if valid:
        pipe = (client or get_redis()).pipeline(transaction=False)
        fields["count"] = valid
        for key, ttl in _keys("latency", time.time()):
            for field, amount in fields.items():
                if isinstance(amount, int):
                    pipe.hincrby(key, field, amount)
                else:
                    pipe.hincrbyfloat(key, field, amount)
            if ttl:
                pipe.expire(key, ttl)
        pipe.execute()
    return valid


def _keys(family: str, ts: float) -> tuple[tuple[str, int | None], ...]:
    """The all-time, hourly and per-minute counter keys of ``family`` at ``ts``, each
    with its TTL (None: kept)."""
    hour, minute = int(ts // 3600), int(ts // 60)
    return ((KEY.format(family=family), None),
            (HOUR_KEY.format(family=family, hour=hour), HOUR_TTL),
            (MINUTE_KEY.format(family=family, minute=minute), MINUTE_TTL))


def _bucket_name(index: int) -> str:
    return f"le_{LATENCY_BUCKETS_MS[index]}" if index < len(LATENCY_BUCKETS_MS) else "le_inf"


def _bucket_counts(hist: dict[str, Any]) -> list[int]:
    """Per-bucket (not cumulative) counts, the last one for +Inf."""
    return [int(float(hist.get(_bucket_name(i), 0))) for i in range(len(LATENCY_BUCKETS_MS) + 1)]


def percentile_ms(hist: dict[str, Any], q: float) -> float | None:
    """The q-quantile of a latency histogram, linearly interpolated inside its bucket."""
    counts = _bucket_counts(hist)
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == len(LATENCY_BUCKETS_MS):
                return float(LATENCY_BUCKETS_MS[-1])  # beyond the last bound: at least that
            low = LATENCY_BUCKETS_MS[index - 1] if index else 0
            high = LATENCY_BUCKETS_MS[index]
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(LATENCY_BUCKETS_MS[-1])


def _merge(hashes: Iterable[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for h in hashes:
        for field, value in h.items():
            merged[field] = merged.get(field, 0) + float(value)
    return merged


@dataclass(frozen=True)
class Target:
    """A seed target: ``value <op> threshold``, shown as ``text``."""

    text: str
    met: Callable[[float], bool]


TARGETS = {
    "task_success_rate": Target(">= 99%", lambda v: v >= 0.99),
    "avg_retry_attempts": Target("< 1.5", lambda v: v < 1.5),
    "dlq_daily_avg_depth": Target("< 5", lambda v: v < 5),
    "schedule_uptime": Target(">= 99.9%", lambda v: v >= 0.999),
    "socketio_latency_p95_ms": Target("< 200 ms", lambda v: v < 200),
    "breaker_trip_rate": Target("< 2%", lambda v: v < 0.02),
}
LABELS = {
    "task_success_rate": "Task success rate",
    "avg_retry_attempts": "Average retry attempts",
    "dlq_daily_avg_depth": "DLQ depth, daily average",
    "schedule_uptime": "Scheduled job uptime",
    "socketio_latency_p95_ms": "Socket.IO delivery latency p95",
    "breaker_trip_rate": "Circuit breaker trip rate",
}


def report(dlq: dict[str, Any] | None, client: redis.Redis | None = None,
           now: float | None = None, series_minutes: int = SERIES_MINUTES) -> dict[str, Any]:
    """The validation metrics over the last 24 h, plus the last ``series_minutes`` minute
    by minute (the live broadcast sends only the newest two: it goes to every client)."""
    client = client or get_redis()
    now = time.time() if now is None else now
    hour, minute = int(now // 3600), int(now // 60)
    hours = range(hour - WINDOW_HOURS + 1, hour + 1)
    minutes = range(minute - series_minutes + 1, minute + 1)
    pipe = client.pipeline(transaction=False)
    for family in ("tasks", "latency"):
        for h in hours:
            pipe.hgetall(HOUR_KEY.format(family=family, hour=h))
        for m in minutes:
            pipe.hgetall(MINUTE_KEY.format(family=family, minute=m))
    for key in (SCHEDULE_DUE, SCHEDULE_ON_TIME, BREAKER_CALLS, BREAKER_TRIPS):
        pipe.get(key)
    replies = pipe.execute(raise_on_error=False)
    n_h, n_m = len(hours), len(minutes)
    tasks_h, tasks_m = replies[:n_h], replies[n_h:n_h + n_m]
    offset = n_h + n_m
    lat_h, lat_m = replies[offset:offset + n_h], replies[offset + n_h:offset + n_h + n_m]
    due, on_time, calls, trips = (_int(v) for v in replies[offset + n_h + n_m:])

    tasks = _merge(_hashes(tasks_h))
    latency = _merge(_hashes(lat_h))
    finished = tasks.get("succeeded", 0) + tasks.get("failed", 0)
    values: dict[str, tuple[float | None, dict[str, Any]]] = {
        "task_success_rate": (
            _ratio(tasks.get("succeeded", 0), finished),
            {"succeeded": int(tasks.get("succeeded", 0)), "failed": int(tasks.get("failed", 0))},
        ),
        "avg_retry_attempts": (
            _ratio(tasks.get("retried", 0), finished),
            {"retries": int(tasks.get("retried", 0)), "finished": int(finished)},
        ),
        "dlq_daily_avg_depth": _dlq_value(dlq),
        "schedule_uptime": (_ratio(on_time, due), {"due": due, "on_time": on_time}),
        "socketio_latency_p95_ms": (
            percentile_ms(latency, 0.95),
            {"samples": int(latency.get("count", 0)),
             "p50_ms": percentile_ms(latency, 0.5), "p99_ms": percentile_ms(latency, 0.99)},
        ),
        "breaker_trip_rate": (_ratio(trips, calls), {"calls": calls, "trips": trips}),
    }
    metrics = []
    for name, (value, detail) in values.items():
        target = TARGETS[name]
        metrics.append({
            "name": name, "label": LABELS[name], "value": value,
            "display": _display(name, value), "target": target.text,
            "met": None if value is None else bool(target.met(value)), "detail": detail,
        })
    series = []
    for m, counts, lat in zip(minutes, _hashes(tasks_m), _hashes(lat_m), strict=True):
        series.append({"t": m * 60, **{t: int(float(counts.get(t, 0))) for t in COUNTED_TYPES},
                       "latency_p95_ms": percentile_ms(lat, 0.95)})
    return {
        "window_s": WINDOW_HOURS * 3600, "generated_at": now,
        "healthy": all(m["met"] is not False for m in metrics),
        "metrics": metrics, "dlq": dlq, "series": series,
    }


def _hashes(replies: list[Any]) -> list[dict[str, Any]]:
    return [r if isinstance(r, dict) else {} for r in replies]


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):  # a reply error (WRONGTYPE) or junk: no data
        return 0


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 6) if whole else None


def _dlq_value(dlq: dict[str, Any] | None) -> tuple[float | None, dict[str, Any]]:
    if dlq is None:
        return None, {"source": "no DLQ figures given"}
    if "error" in dlq:
        return None, {"error": dlq["error"]}
    value = dlq.get("daily_avg_depth")
    return (None if value is None else float(value)), {"depth": dlq.get("depth")}


def _display(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if name in ("task_success_rate", "schedule_uptime", "breaker_trip_rate"):
        return f"{value * 100:.2f}%"
    if name == "socketio_latency_p95_ms":
        return f"{value:.0f} ms"
    return f"{value:.2f}"


def prometheus_text(dlq: dict[str, Any] | None, client: redis.Redis | None = None,
                    others: Iterable[Any] = ()) -> bytes:
    """Prometheus text exposition: raw all-time counters and the validation metrics, and
    the series of ``others`` (collectors of other areas, e.g. :mod:`k1.flow.metrics`)."""
    client = client or get_redis()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(client, report(dlq, client)))
    for collector in others:
        registry.register(collector)
    return generate_latest(registry)


class _Collector:
    def __init__(self, client: redis.Redis, current: dict[str, Any]) -> None:
        self.client, self.current = client, current

    def collect(self) -> Iterable[Any]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(KEY.format(family="tasks"))
        pipe.hgetall(KEY.format(family="latency"))
        for key in (SCHEDULE_DUE, SCHEDULE_ON_TIME, BREAKER_CALLS, BREAKER_TRIPS):
            pipe.get(key)
        tasks, latency, *plain = pipe.execute(raise_on_error=False)
        tasks, latency = _hashes([tasks])[0], _hashes([latency])[0]

        events = CounterMetricFamily("k1_task_events", "Task events published, by type",
                                     labels=["type"])
        for event_type in (*COUNTED_TYPES, DEFERRED):
            events.add_metric([event_type], float(tasks.get(event_type, 0)))
        yield events

        counts = _bucket_counts(latency)
        cumulative, buckets = 0, []
        for index, count in enumerate(counts):
            cumulative += count
            bound = (str(LATENCY_BUCKETS_MS[index] / 1000) if index < len(LATENCY_BUCKETS_MS)
                     else "+Inf")
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "k1_socketio_delivery_latency_seconds",
            "Socket.IO delivery latency (event emitted to dashboard received), as reported",
            buckets=buckets, sum_value=float(latency.get("sum_ms", 0)) / 1000,
        )

        names = ("k1_schedule_due", "k1_schedule_on_time", "k1_breaker_calls",
                 "k1_breaker_trips")
        for name, value in zip(names, plain, strict=True):
            yield CounterMetricFamily(name, f"{name.removeprefix('k1_')} (all time)",
                                      value=_int(value))

        dlq = self.current["dlq"] or {}
        if isinstance(dlq.get("depth"), int | float):
            yield GaugeMetricFamily("k1_dlq_depth", "Dead letters waiting", value=dlq["depth"])

        value = GaugeMetricFamily("k1_validation_metric",
                                  "Validation metric over the last 24 h", labels=["name"])
        met = GaugeMetricFamily("k1_validation_met",
                                "1 when the validation metric meets its seed target",
                                labels=["name"])
        for metric in self.current["metrics"]:
            if metric["value"] is not None:
                value.add_metric([metric["name"]], float(metric["value"]))
                met.add_metric([metric["name"]], 1.0 if metric["met"] else 0.0)
        yield value
        yield met
