"""Validation metrics: counters fed by the events, read by /api/metrics and /metrics."""

from __future__ import annotations

import pytest
import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

from k1.events import make_event, metrics
from tests.conftest import API
from tests.events.sockets import Listener

NAMES = ["task_success_rate", "avg_retry_attempts", "dlq_daily_avg_depth", "schedule_uptime",
         "socketio_latency_p95_ms", "breaker_trip_rate"]


@pytest.fixture
def scratch(redis_server):
    """A Redis database of its own, so that other tests' events do not count."""
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7",
                                  decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()


def _count(client: redis.Redis, *types: str) -> None:
    pipe = client.pipeline()
    for event_type in types:
        metrics.count_transitions(pipe, [make_event(event_type)])
    pipe.execute()


def _by_name(report: dict) -> dict[str, dict]:
    return {m["name"]: m for m in report["metrics"]}


def test_percentiles_come_from_the_histogram() -> None:
    hist = {"le_5": 50, "le_10": 40, "le_25": 10}
    assert metrics.percentile_ms(hist, 0.5) == pytest.approx(5.0)
    assert 10 < metrics.percentile_ms(hist, 0.95) <= 25
    assert metrics.percentile_ms({}, 0.95) is None
    assert metrics.percentile_ms({"le_inf": 3}, 0.5) == 10000


def test_no_data_is_not_applicable_not_a_pass(scratch) -> None:
    report = metrics.report(None, scratch)
    assert [m["name"] for m in report["metrics"]] == NAMES
    for metric in report["metrics"]:
        assert metric["value"] is None and metric["met"] is None and metric["display"] == "n/a"
    assert report["healthy"] is True and len(report["series"]) == metrics.SERIES_MINUTES


def test_each_metric_against_its_target(scratch) -> None:
    _count(scratch, *["succeeded"] * 198, "failed", "failed", *["retried"] * 100)
    scratch.set(metrics.SCHEDULE_DUE, 1000)
    scratch.set(metrics.SCHEDULE_ON_TIME, 1000)
    scratch.set(metrics.BREAKER_CALLS, 100)
    scratch.set(metrics.BREAKER_TRIPS, 5)
    assert metrics.record_latency([20] * 90 + [400] * 10, scratch) == 100
    dlq = {"depth": 2, "by_task": {}, "by_exception": {}, "oldest_at": None,
           "daily_avg_depth": 1.5}
    report = metrics.report(dlq, scratch)
    got = _by_name(report)
    assert got["task_success_rate"]["value"] == pytest.approx(0.99)
    assert got["task_success_rate"]["met"] is True
    assert got["avg_retry_attempts"]["value"] == pytest.approx(0.5)
    assert got["avg_retry_attempts"]["met"] is True
    assert got["dlq_daily_avg_depth"] == {**got["dlq_daily_avg_depth"], "value": 1.5,
                                          "met": True}
    assert got["schedule_uptime"]["met"] is True
    assert got["breaker_trip_rate"]["value"] == pytest.approx(0.05)
    assert got["breaker_trip_rate"]["met"] is False and got["breaker_trip_rate"]["target"] == "< 2%"
    assert got["socketio_latency_p95_ms"]["value"] > 200  # 10 % at 400 ms: p95 is above 200
    assert got["socketio_latency_p95_ms"]["met"] is False
    assert report["healthy"] is False
    last = report["series"][-1]
    assert (last["succeeded"], last["failed"], last["retried"]) == (198, 2, 100)


def test_a_batch_is_counted_per_counter_not_per_event(scratch) -> None:
    records = [make_event(t) for t in ["succeeded"] * 50 + ["retried"]]
    records += [make_event("retried", deferred=True),
                make_event("submitted")]  # not a task_event type: not counted
    pipe = scratch.pipeline()
    metrics.count_transitions(pipe, records)
    commands = len(pipe.command_stack)
    pipe.execute()
    counted = {"succeeded": "50", "retried": "1", "deferred": "1"}
    assert scratch.hgetall(metrics.KEY.format(family="tasks")) == counted
    ts = records[0]["ts"]
    hour = metrics.HOUR_KEY.format(family="tasks", hour=int(ts // 3600))
    minute = metrics.MINUTE_KEY.format(family="tasks", minute=int(ts // 60))
    assert scratch.hgetall(hour) == counted and scratch.hgetall(minute) == counted
    assert scratch.ttl(metrics.KEY.format(family="tasks")) == -1  # all time: kept
    assert 0 < scratch.ttl(hour) <= metrics.HOUR_TTL
    assert 0 < scratch.ttl(minute) <= metrics.MINUTE_TTL
    assert commands == 1  # every counter of the batch in one command, not 5 per event (260)


def test_a_missing_or_failing_dlq_is_not_applicable(scratch) -> None:
    assert _by_name(metrics.report(None, scratch))["dlq_daily_avg_depth"]["display"] == "n/a"
    failing = _by_name(metrics.report({"error": "OperationalError: down"}, scratch))
    assert failing["dlq_daily_avg_depth"]["value"] is None
    assert "down" in failing["dlq_daily_avg_depth"]["detail"]["error"]


def test_metrics_routes_need_a_token(web) -> None:
    for path in ("/api/metrics", "/metrics"):
        response = requests.get(web + path, timeout=10)
        assert response.status_code == 401 and response.json()["error"]


def test_api_metrics_counts_real_tasks_and_reported_latency(web, worker, make_token, unique):
    token = make_token(f"ada-{unique}", "acme")
    api = API(web, token)
    before = _by_name(api.get("/api/metrics").json())
    with Listener(web, token) as alice:
        task_id = api.post("/api/tasks", json={"task": "k1.tasks.demo.flaky",
                                                "project_id": "acme"}).json()["task_id"]
        alice.wait_for(lambda r: r.name == "task_completed" and r.data["task_id"] == task_id)
        # recorded before the answer; the task counters travelled with the events
        assert alice.call("latency", {"samples": [12.5, 40, "x", -3]})["recorded"] == 2
    report = api.get("/api/metrics").json()
    after = _by_name(report)
    assert [m["name"] for m in report["metrics"]] == NAMES
    for metric in report["metrics"]:
        assert {"value", "target", "met", "label", "display"} <= set(metric)
    assert after["task_success_rate"]["detail"]["succeeded"] \
        > before["task_success_rate"]["detail"]["succeeded"]
    assert after["task_success_rate"]["value"] is not None
    assert after["socketio_latency_p95_ms"]["detail"]["samples"] \
        == before["socketio_latency_p95_ms"]["detail"]["samples"] + 2


def test_prometheus_text(web, make_token) -> None:
    response = API(web, make_token("prometheus", "*")).get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {"k1_task_events", "k1_socketio_delivery_latency_seconds", "k1_validation_metric",
            "k1_validation_met", "k1_breaker_trips", "k1_schedule_due"} <= set(families)
    types = {s.labels["type"] for s in families["k1_task_events"].samples}
    assert {"received", "started", "succeeded", "failed", "retried", "dead"} <= types


def test_the_metrics_event_is_broadcast_to_every_connection(web, make_token) -> None:
    with Listener(web, make_token("bob", "beta")) as bob:
        report = bob.wait_for(lambda r: r.name == "metrics", timeout=30,
                              what="a metrics broadcast").data
        assert [m["name"] for m in report["metrics"]] == NAMES
