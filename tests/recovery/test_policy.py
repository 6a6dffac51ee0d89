"""The retry policy and the error table: pure logic."""

from __future__ import annotations

import pybreaker
import pytest
import requests
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from k1.recovery.breakers import BreakerOpen
from k1.recovery.errors import (
    Kind,
    NonRetryableError,
    TransientError,
    classify,
    is_transient_status,
)
from k1.recovery.policy import RetryPolicy


@pytest.mark.parametrize(("retries", "base"), [(0, 1), (1, 2), (2, 4), (3, 8), (5, 32)])
def test_countdown_doubles_with_10_to_20_percent_jitter(retries: int, base: float) -> None:
    waits = [RetryPolicy().countdown(retries) for _ in range(200)]
    assert all(base * 1.1 - 1e-3 <= w <= base * 1.2 + 1e-3 for w in waits), (min(waits),
                                                                                max(waits))
    assert len(set(waits)) > 50  # it is random, not a constant


def test_countdown_is_capped_at_the_maximum() -> None:
    assert {RetryPolicy().countdown(12) for _ in range(20)} == {60.0}


def test_countdown_never_overflows() -> None:
    assert RetryPolicy().countdown(10_000) == 60.0
    # 2.0 ** 5000 alone would raise OverflowError; a huge maximum still bounds nothing.
    assert RetryPolicy(maximum=1e300).countdown(5_000) >= 2.0 ** 64


def test_retry_after_wins_when_longer() -> None:
    assert RetryPolicy().countdown(0, retry_after=30) == 30
    assert RetryPolicy().countdown(3, retry_after=1) >= 8.8


def test_attempts_bound_the_retries() -> None:
    policy = RetryPolicy(attempts=3)
    assert [policy.should_retry(n) for n in range(4)] == [True, True, False, False]


def test_per_call_overrides_are_checked() -> None:
    policy = RetryPolicy().merged({"attempts": 5, "initial": 0.5, "jitter": [0.1, 0.1]})
    assert policy.attempts == 5 and policy.countdown(1) == 1.1
    with pytest.raises(ValueError, match="unknown retry policy field"):
        RetryPolicy().merged({"tries": 3})
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        RetryPolicy().merged({"attempts": 0})


def http_error(status: int, headers: dict[str, str] | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    return requests.HTTPError(f"{status}", response=response)


@pytest.mark.parametrize(("exc", "kind"), [
    (TransientError("x"), Kind.RETRY),
    (NonRetryableError("x"), Kind.DEAD),
    (http_error(503), Kind.RETRY),
    (http_error(500), Kind.RETRY),
    (http_error(429), Kind.RETRY),
    (http_error(404), Kind.DEAD),
    (http_error(422), Kind.DEAD),
    (requests.ConnectionError("refused"), Kind.RETRY),
    (requests.Timeout("slow"), Kind.RETRY),
    (TimeoutError(), Kind.RETRY),
    (ConnectionResetError(), Kind.RETRY),
    (ValueError("bad input"), Kind.DEAD),
    (KeyError("k"), Kind.DEAD),
    (pybreaker.CircuitBreakerError("open"), Kind.DEFER),
    (BreakerOpen("analysis", 12.0), Kind.DEFER),
    (RuntimeError("unknown"), Kind.RETRY),
    (SoftTimeLimitExceeded(), Kind.DEAD),
    (TimeLimitExceeded(360), Kind.DEAD),
])
def test_classification_table(exc: Exception, kind: Kind) -> None:
    assert classify(exc).kind is kind


def test_retry_after_header_and_breaker_wait_are_read() -> None:
    assert classify(http_error(429, {"Retry-After": "7"})).retry_after == 7
    assert classify(BreakerOpen("analysis", 12.5)).retry_after == 12.5
    assert classify(http_error(503)).retry_after is None


def test_a_task_extends_the_table_ahead_of_the_defaults() -> None:
    class Declined(ValueError):
        pass

    assert classify(Declined()).kind is Kind.DEAD
    assert classify(Declined(), ((Declined, Kind.RETRY),)).kind is Kind.RETRY


@pytest.mark.parametrize(("status", "transient"), [
    (None, True), (429, True), (500, True), (503, True), (599, True),
    (400, False), (401, False), (404, False), (409, False), (422, False),
])
def test_one_rule_says_which_http_statuses_are_transient(status: int | None,
                                                          transient: bool) -> None:
    assert is_transient_status(status) is transient
    if status is not None:
        assert (classify(http_error(status)).kind is Kind.RETRY) is transient
