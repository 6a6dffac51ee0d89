"""Circuit breakers shared through Redis by real worker processes."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests

from k1.recovery import breakers
from tests.conftest import API, celery_worker
from tests.recovery.conftest import letters_of, post_task, wait_letter, wait_task
from tests.support import control, wait_for

ANALYZE = "k1.tasks.analyze_profile"


@pytest.fixture(scope="module")
def two_workers(services) -> Iterator[None]:
    """Two more worker processes, each alone on its queue."""
    first = celery_worker("breaker-a", concurrency=1, queues="q-a")
    second = celery_worker("breaker-b", concurrency=1, queues="q-b")
    yield
    first.stop()
    second.stop()


@pytest.fixture
def service(external_service: str) -> Iterator[str]:
    breakers.reset("analysis")
    control(external_service, mode="ok", reset_counters=True)
    yield external_service
    control(external_service, mode="ok")
    breakers.reset("analysis")


def breaker_state(api: API, name: str) -> dict | None:
    found = [b for b in api.get("/api/breakers").json()["breakers"] if b["name"] == name]
    return found[0] if found else None


def test_a_breaker_opened_in_one_process_defers_work_in_another(
    api: API, service: str, two_workers: None,
) -> None:
    control(service, mode="fail", status=503)
    # Worker A: five failing calls (no retries) open the breaker.
    tripping = [post_task(api, ANALYZE, data_path=f"p{i}", retry={"attempts": 1}, queue="q-a")
                for i in range(5)]
    opened = wait_for(lambda: (s := breaker_state(api, "analysis")) and s["state"] == "open" and s,
                      timeout=60, message="breaker 'analysis' never opened")
    assert opened["fail_max"] == 5 and opened["reset_timeout"] == 3
    assert opened["opened_at"] and opened["next_half_open_at"] > opened["opened_at"]
    calls_so_far = requests.get(f"{service}/_control", timeout=5).json()["requests"]
    assert calls_so_far == 5

    # Worker B sees it open: its task is deferred without calling the service, although
    # its policy allows a single attempt: a deferral spends none.
    deferred = post_task(api, ANALYZE, data_path="b", retry={"attempts": 1}, queue="q-b")
    waiting = wait_task(api, deferred, {"RETRY", "FAILURE", "SUCCESS"})
    assert waiting["state"] == "RETRY" and waiting["error"]["type"] == "BreakerOpen"
    assert requests.get(f"{service}/_control", timeout=5).json()["requests"] == calls_so_far

    # The dependency recovers; after reset_timeout a trial call half-opens and closes it.
    control(service, mode="ok")
    done = wait_task(api, deferred, {"SUCCESS", "FAILURE"}, timeout=60)
    assert done["state"] == "SUCCESS" and done["result"]["data_path"] == "b"
    assert breaker_state(api, "analysis")["state"] == "closed"
    assert letters_of(deferred) == []

    # The first four died (transient, out of attempts) with the breaker still closed;
    # the fifth tripped it, was deferred, and succeeded after the recovery.
    for task_id in tripping[:4]:
        [letter] = letters_of(task_id)
        assert letter.exception_type == "HTTPError" and letter.attempts == 1
    assert wait_task(api, tripping[4], {"SUCCESS", "FAILURE"})["state"] == "SUCCESS"


def test_client_errors_do_not_open_the_breaker(api: API, service: str, worker) -> None:
    control(service, mode="fail", status=404)
    task_ids = [post_task(api, ANALYZE, data_path=f"missing{i}") for i in range(6)]
    for task_id in task_ids:
        assert wait_task(api, task_id, {"FAILURE"})["error"]["type"] == "HTTPError"
    assert breaker_state(api, "analysis")["state"] == "closed"
    # The FAILURE state is stored before on_failure writes the letter: wait for it.
    assert wait_letter(task_ids[0]).attempts == 1  # a 404 is not retried


def test_reset_closes_a_breaker_and_needs_an_operator(api: API, operator: API,
                                                      service: str) -> None:
    cb = breakers.breaker("analysis")

    def fail() -> None:
        raise ConnectionError("down")

    for _ in range(5):
        with pytest.raises((ConnectionError, breakers.BreakerOpen)):
            cb.call(fail)
    assert breaker_state(api, "analysis")["state"] == "open"
    assert api.post("/api/breakers/analysis/reset").status_code == 403
    response = operator.post("/api/breakers/analysis/reset")
    assert response.status_code == 200 and response.json()["state"] == "closed"
    assert response.json()["fail_counter"] == 0
    assert operator.post("/api/breakers/nope/reset").status_code == 404


def test_only_transient_http_failures_count_against_a_breaker(services, unique: str) -> None:
    from tests.recovery.test_policy import http_error

    cb = breakers.breaker(f"rule-{unique}", fail_max=2, reset_timeout=30)

    def fail(status: int) -> None:
        raise http_error(status)

    for status in (404, 422, 400):  # the caller's own mistakes: the dependency is fine
        with pytest.raises(requests.HTTPError):
            cb.call(fail, status)
    assert cb.current_state == "closed" and cb.fail_counter == 0
    with pytest.raises(requests.HTTPError):
        cb.call(fail, 503)
    with pytest.raises(breakers.BreakerOpen) as refused:
        cb.call(fail, 429)  # the second transient failure trips it
    assert cb.current_state == "open"
    assert 25 <= refused.value.retry_after <= 30  # read from the shared opened_at
    status = breakers.status(f"rule-{unique}")
    assert status is not None and status.opened_at and status.next_half_open_at


def test_calls_through_one_breaker_run_at_the_same_time(services, unique: str) -> None:
    """pybreaker alone holds its lock for the whole call: a second thread's call waited
    for the first (here: until its wait timed out). K1's breaker runs them together."""
    guard = breakers.breaker(f"concurrency-{unique}")
    inside, released = threading.Event(), threading.Event()
    first: list[bool] = []

    def hold() -> bool:
        inside.set()
        return released.wait(10)  # released by the second call, or timed out

    thread = threading.Thread(target=lambda: first.append(guard.call(hold)))
    thread.start()
    assert inside.wait(10), "the first call never started"
    guard.call(released.set)
    thread.join(15)
    assert first == [True], "the second call waited for the first to finish"
