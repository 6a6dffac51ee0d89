"""The waits limits cause, counted by real workers and exported at GET /metrics."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from k1.flow import CONCURRENCY_WAIT_FIRST
from tests.conftest import API
from tests.flow.conftest import send, until_workers_reread_limits, wait_runs
from tests.support import wait_for

FAMILIES = ("k1_limit_waits", "k1_limit_wait_seconds", "k1_limit_running",
            "k1_limit_saturated_keys")


@pytest.fixture
def operator(web, make_token) -> API:
    return API(web, make_token("prometheus", "*"))


def scrape(api: API, limit: str) -> dict[tuple[str, str], float]:
    """{(series, kind or ""): value} of ``limit`` on /metrics."""
    answer = api.get("/metrics")
    assert answer.status_code == 200, answer.text
    values = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if family.name in FAMILIES and sample.labels.get("limit") == limit:
                values[sample.name, sample.labels.get("kind", "")] = sample.value
    return values


def put_limit(api: API, name: str, **body: object) -> None:
    answer = api.put(f"/api/limits/{name}", json={"tasks": ["tests.flow.paced"], **body})
    assert answer.status_code == 200, answer.text
    until_workers_reread_limits()


def test_concurrency_waits_and_use_are_on_metrics(flow_workers, operator):
    name, tag = f"test-mc-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    put_limit(operator, name, per="tag", concurrency=1)
    try:
        assert scrape(operator, name) == {("k1_limit_running", ""): 0,
                                          ("k1_limit_saturated_keys", ""): 0}
        send("tests.flow.paced", 3, project_id="acme", tag=tag, ms=2000)
        # The gauges while one task holds the slot and the others find it taken.
        wait_for(lambda: scrape(operator, name).get(("k1_limit_saturated_keys", "")) == 1,
                 timeout=60, message=lambda: f"never saturated: {scrape(operator, name)}")
        assert scrape(operator, name)[("k1_limit_running", "")] <= 1
        wait_runs(tag, 3, timeout=120)
        seen = scrape(operator, name)
    finally:
        assert operator.delete(f"/api/limits/{name}").status_code == 200
    # The first run started at once; the other two waited at least once each.
    waits = seen[("k1_limit_waits_total", "concurrency")]
    assert waits >= 2, seen
    assert seen[("k1_limit_wait_seconds_total", "concurrency")] >= waits * CONCURRENCY_WAIT_FIRST
    assert ("k1_limit_waits_total", "rate") not in seen
    assert seen[("k1_limit_running", "")] == 0
    assert scrape(operator, name) == {}, "a deleted limit's series stay on /metrics"


def test_rate_waits_are_on_metrics(flow_workers, operator):
    name, tag, count = f"test-mr-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex, 6
    put_limit(operator, name, per="tag", rate="4/s")
    try:
        send("tests.flow.paced", count, project_id="acme", tag=tag)
        wait_runs(tag, count, timeout=120)
        seen = scrape(operator, name)
    finally:
        assert operator.delete(f"/api/limits/{name}").status_code == 200
    # Starts 0.25 s apart: whatever the workers' lag, the last ones had to wait their turn.
    assert seen.get(("k1_limit_waits_total", "rate"), 0) >= 2, seen
    assert seen[("k1_limit_wait_seconds_total", "rate")] > 0.25, seen
    assert ("k1_limit_waits_total", "concurrency") not in seen
    assert ("k1_limit_running", "") not in seen  # no concurrency: no slots to count
