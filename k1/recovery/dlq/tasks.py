"""Housekeeping tasks of the dead-letter queue, run by beat (see k1.scheduling).

- ``k1.dlq.drain_spool``: letters spooled in Redis during a database outage → database
  (letters it still refuses → quarantine).
- ``k1.dlq.enforce_retention``: drop letters older than ``K1_DLQ_RETENTION_DAYS`` or
  beyond ``K1_DLQ_MAX_ROWS`` (oldest first).
- ``k1.dlq.snapshot_depth``: record the depth; the last day's snapshots give
  ``daily_avg_depth``.
"""

from __future__ import annotations

from datetime import timedelta

from k1.celery import app
from k1.recovery.dlq.store import DeadLetterStore
from k1.settings import get_settings

# Housekeeping is retried by its own schedule, not by K1Task's policy, and never dead-letters
# itself: a failed drain simply runs again at its next fire.
HOUSEKEEPING = {"ignore_result": False, "acks_late": True}


@app.task(name="k1.dlq.drain_spool", **HOUSEKEEPING)
def drain_spool() -> dict[str, int]:
    store = DeadLetterStore()
    drained = store.drain_spool()
    return {"written": drained.written, "quarantined": drained.quarantined,
            "left": store.spool_depth()}


@app.task(name="k1.dlq.enforce_retention", **HOUSEKEEPING)
def enforce_retention() -> dict[str, int]:
    settings = get_settings()
    return DeadLetterStore().enforce_retention(
        max_age=timedelta(days=settings.dlq_retention_days), max_rows=settings.dlq_max_rows)


@app.task(name="k1.dlq.snapshot_depth", **HOUSEKEEPING)
def snapshot_depth() -> dict[str, int]:
    return {"depth": DeadLetterStore().snapshot_depth()}
