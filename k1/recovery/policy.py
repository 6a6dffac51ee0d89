"""The retry policy: how many attempts, and how long to wait before each.

Applied by re-enqueueing with a countdown (Celery ``retry``), never by sleeping in a
worker slot::

    policy = RetryPolicy(attempts=5, initial=2)
    policy.countdown(retries=0)          # ~2.2-2.4 s before the 2nd attempt
    policy.countdown(retries=3)          # ~17.6-19.2 s before the 5th

A task overrides it with decorator options (``@app.task(base=K1Task, retry_policy=...)``)
and a single call with a header: ``apply_async(..., headers={"k1_retry": {"attempts": 5}})``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_ATTEMPTS = 3  # the first run and two retries
DEFAULT_INITIAL_WAIT = 1.0  # seconds before the second attempt, doubling after
DEFAULT_MAX_WAIT = 60.0  # no single backoff longer than a minute
DEFAULT_JITTER = (0.10, 0.20)  # +10-20 % so that a burst of failures does not retry in step
MAX_DOUBLINGS = 64  # past 2**64 any initial wait is beyond any maximum: stop doubling
# Waits for an open breaker: how many times a task may be deferred before it dies, and the
# longest single deferral. Both stay far below the broker visibility timeout (1 h).
DEFAULT_MAX_DEFERRALS = 30
DEFAULT_MAX_DEFER_WAIT = 300.0  # 5 min


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    :param attempts: total runs allowed, the first included (default 3).
    :param initial: seconds before the second attempt (default 1), doubled each time.
    :param maximum: the longest wait (default 60 s), jitter included.
    :param jitter: ``(low, high)`` fractions added at random to each wait (default 10-20 %).
    :param max_deferrals: how often an open breaker may defer the task (default 30).
    """

    attempts: int = DEFAULT_ATTEMPTS
    initial: float = DEFAULT_INITIAL_WAIT
    maximum: float = DEFAULT_MAX_WAIT
    jitter: tuple[float, float] = DEFAULT_JITTER
    max_deferrals: int = DEFAULT_MAX_DEFERRALS

    def __post_init__(self) -> None:
        low, high = self.jitter
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("need 0 < initial <= maximum")
        if not 0 <= low <= high:
            raise ValueError(f"jitter must be 0 <= low <= high, got {self.jitter}")

    def should_retry(self, retries: int) -> bool:
        """True while another attempt is allowed after ``retries`` retries so far."""
        return retries + 1 < self.attempts

    def countdown(self, retries: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt, given ``retries`` retries so far.

        A server's ``Retry-After`` is honoured when it asks for longer.
        """
        low, high = self.jitter
        # initial * 2**retries, computed in floats so a huge ``retries`` cannot overflow.
        base = min(self.maximum, self.initial * 2.0 ** min(retries, MAX_DOUBLINGS))
        delay = min(self.maximum, base * (1 + random.uniform(low, high)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, DEFAULT_MAX_DEFER_WAIT))
        return round(delay, 3)

    def merged(self, overrides: Mapping[str, Any] | None) -> RetryPolicy:
        """This policy with per-call ``overrides``; unknown keys raise ValueError."""
        if not overrides:
            return self
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown retry policy field(s): {', '.join(sorted(unknown))}")
        values = dict(overrides)
        if "jitter" in values:
            values["jitter"] = tuple(values["jitter"])
        return replace(self, **values)


DEFAULT_POLICY = RetryPolicy()
