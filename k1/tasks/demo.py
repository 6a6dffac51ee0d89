"""``flaky``: the demo task that fails on demand, for tests, benchmarks and the dashboard."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import redis.client

from k1.celery import app
from k1.recovery.errors import NonRetryableError, TransientError
from k1.tasks.base import K1Task

FAILURE_COUNT_TTL = 24 * 3600  # a key's run count is forgotten after a day
MAX_SLEEP_MS = 10_000  # a demo run sleeps at most 10 s: enough for any demo, never a hog


@app.task(base=K1Task, bind=True, name="k1.tasks.demo.flaky", public=True,
          argument_limits={"sleep_ms": (0, MAX_SLEEP_MS), "fail_times": (0, 1_000)})
def flaky(
    self: K1Task,
    project_id: str,
    fail_times: int = 0,
    permanent: bool = False,
    sleep_ms: int = 0,
    key: str | None = None,
) -> dict[str, Any]:
    """Fail permanently (``permanent``), or count this attempt, sleep ``sleep_ms``, and
    fail transiently while the count for ``key`` (default: this task id, so the count
    spans its retries) is at most ``fail_times``.

    With ``fail_times``, counting is a side effect done once per attempt
    (:mod:`k1.tasks.effects`): ``k1:flaky:<key>`` counts attempts and
    ``k1:flaky:<key>:runs`` keeps their start times, and an attempt delivered again
    (its worker process died before the acknowledgement) finds its count in the ledger
    instead of counting twice. The sleep comes after the count, so a worker killed
    mid-sleep is a kill after the effect, the case the ledger exists for.
    """
    if permanent:
        raise NonRetryableError(f"flaky: permanent failure for project {project_id}")
    runs = 1
    if fail_times:
        counter = f"k1:flaky:{key or self.request.id}"
        started = time.time()

        def count(pipe: redis.client.Pipeline, current: Mapping[str, str | None]) -> int:
            attempts = int(current[counter] or 0) + 1
            pipe.set(counter, attempts, ex=FAILURE_COUNT_TTL)
            pipe.rpush(f"{counter}:runs", started).expire(f"{counter}:runs", FAILURE_COUNT_TTL)
            return attempts

        # One effect per attempt: a retry is a new attempt, a redelivery is not.
        runs = self.effects.redis(f"attempt:{self.request.id}:{self.request.retries}", count,
                                  watch=[counter])
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    if fail_times and runs <= fail_times:
        raise TransientError(f"flaky: failure {runs} of {fail_times} for {key or 'task'}")
    return {"project_id": project_id, "runs": runs,
            "idempotency_key": self.idempotency_key()}
