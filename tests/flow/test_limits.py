"""Concurrency and rate limits across two real worker nodes (four pool processes)."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.conftest import celery_worker
from tests.flow.conftest import TASKS, max_overlap, send, until_workers_reread_limits, wait_runs
from tests.flow.tasks import ADMITTED, STARTED, TEST_LEASE
from tests.support import wait_for


def test_concurrency_never_exceeds_its_limit_per_project(flow_workers):
    tag_a, tag_b = uuid.uuid4().hex, uuid.uuid4().hex
    project_a, project_b = f"pa-{tag_a[:6]}", f"pb-{tag_b[:6]}"
    send("tests.flow.limited", 8, project_id=project_a, tag=tag_a, ms=300)
    send("tests.flow.limited", 4, project_id=project_b, tag=tag_b, ms=300)
    rows_a = wait_runs(tag_a, 8, timeout=120)
    rows_b = wait_runs(tag_b, 4, timeout=120)
    assert max_overlap(rows_a) == 2, f"project A ran {max_overlap(rows_a)} at once"
    assert max_overlap(rows_b) <= 2, f"project B ran {max_overlap(rows_b)} at once"
    # Waiting for a slot spends no attempt.
    assert {attempt for *_, attempt, _ in rows_a + rows_b} == {1}


def test_a_sigkilled_worker_frees_its_slots_within_the_lease(flow_workers, redis_client):
    from k1.flow.gate import CONCURRENCY_KEY

    tag, project = uuid.uuid4().hex, f"pk-{uuid.uuid4().hex[:6]}"
    victim = celery_worker("flow-victim", concurrency=2, queues="flow-victim", include=TASKS)
    try:
        send("tests.flow.limited", 2, queue="flow-victim", project_id=project, tag=tag,
             ms=120_000)
        wait_for(lambda: redis_client.llen(STARTED.format(tag)) == 2, timeout=60,
                 message="the victim never ran both long tasks")
        victim.kill()
        killed_at = time.monotonic()
        slots = CONCURRENCY_KEY.format("test-pair", project)
        assert redis_client.zcard(slots) == 2, "the killed runs' slots should still be held"
        send("tests.flow.limited", 1, project_id=project, tag=tag, ms=0)
        wait_runs(tag, 1, timeout=60)
        freed_after = time.monotonic() - killed_at
    finally:
        victim.kill()
        redis_client.delete("flow-victim")
    # The lease, then the waiting task's next re-check (backing off 0.5, 1, 2, 4 s...).
    assert freed_after < TEST_LEASE + 8, f"the slot came back only after {freed_after:.1f}s"
    assert freed_after >= TEST_LEASE * 0.8, f"ran after {freed_after:.1f}s: inside the lease?"


@pytest.fixture
def runtime_limit(services):
    from k1.flow import limits

    names = []

    def put(limit: limits.Limit) -> None:
        limits.save_runtime(limit)
        names.append(limit.name)
        until_workers_reread_limits()

    yield put
    for name in names:
        limits.delete_runtime(name)


def test_observed_rate_stays_within_ten_percent_of_the_limit(flow_workers, runtime_limit):
    from k1.flow.limits import Limit

    tag, count, rate = uuid.uuid4().hex, 40, 10
    runtime_limit(Limit("test-rate", rate=f"{rate}/s", per="tag", tasks=("tests.flow.paced",)))
    send("tests.flow.paced", count, project_id="acme", tag=tag)
    rows = wait_runs(tag, count, timeout=120)
    starts = [start for start, *_ in rows]
    observed = (count - 1) / (starts[-1] - starts[0])
    print(f"observed {observed:.2f}/s under a {rate}/s limit")
    assert abs(observed - rate) <= rate * 0.10, f"observed {observed:.2f}/s, limit {rate}/s"
    # No window of one second holds more admissions than the limit allows (+1 at the
    # edges). Admissions, not starts: a run let through at its reserved time may start
    # late on a loaded worker, and bunch with the next ones (tests/flow/tasks.py).
    from k1.connections import get_redis

    admitted = sorted(float(x) for x in get_redis().lrange(ADMITTED.format(tag), 0, -1))
    assert len(admitted) == count
    for i, at in enumerate(admitted):
        assert sum(1 for a in admitted[i:] if a < at + 1.0) <= rate + 1, admitted
    assert {attempt for *_, attempt, _ in rows} == {1}


def test_a_limiter_around_a_call_holds_its_rate(flow_workers):
    tag, count = uuid.uuid4().hex, 12
    send("tests.flow.guarded", count, project_id="acme", tag=tag)
    starts = [start for start, *_ in wait_runs(tag, count, timeout=120)]
    observed = (count - 1) / (starts[-1] - starts[0])
    print(f"limiter: observed {observed:.2f}/s under 5/s")
    assert observed <= 5 * 1.10, f"observed {observed:.2f}/s over a 5/s limiter"
