"""``flaky``: the demo task that fails on demand, for tests, benchmarks and the dashboard."""

from __future__ import annotations

import time
from typing import Any

from k1.celery import app
from k1.connections import get_redis
from k1.recovery.errors import NonRetryableError, TransientError
from k1.tasks.base import K1Task

FAILURE_COUNT_TTL = 24 * 3600  # a key's failure count is forgotten after a day


@app.task(base=K1Task, bind=True, name="k1.tasks.demo.flaky")
def flaky(
    self: K1Task,
    project_id: str,
    fail_times: int = 0,
    permanent: bool = False,
    sleep_ms: int = 0,
    key: str | None = None,
) -> dict[str, Any]:
    """Sleep ``sleep_ms``, then fail transiently the first ``fail_times`` runs for ``key``
    (default: this task id, so the count spans its retries), or always fail permanently.

    With ``fail_times``, the start time of each run is kept in ``k1:flaky:<key>:runs``.
    """
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    if permanent:
        raise NonRetryableError(f"flaky: permanent failure for project {project_id}")
    runs = 1
    if fail_times:
        counter = f"k1:flaky:{key or self.request.id}"
        pipe = get_redis().pipeline()
        pipe.incr(counter).expire(counter, FAILURE_COUNT_TTL)
        pipe.rpush(f"{counter}:runs", time.time()).expire(f"{counter}:runs", FAILURE_COUNT_TTL)
        runs = pipe.execute()[0]
        if runs <= fail_times:
            raise TransientError(f"flaky: failure {runs} of {fail_times} for {key or 'task'}")
    return {"project_id": project_id, "runs": runs,
            "idempotency_key": self.idempotency_key()}
