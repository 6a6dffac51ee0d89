"""``k1.history.enforce_retention``: drop tasks older than ``K1_HISTORY_RETENTION_DAYS``
or beyond ``K1_HISTORY_MAX_ROWS`` (oldest first); run nightly by beat (k1.scheduling).
"""

from __future__ import annotations

from datetime import timedelta

from k1.celery import app
from k1.history import store
from k1.recovery.dlq.tasks import HOUSEKEEPING
from k1.settings import get_settings


@app.task(name="k1.history.enforce_retention", **HOUSEKEEPING)
def enforce_retention() -> dict[str, int]:
    settings = get_settings()
    return store.enforce_retention(max_age=timedelta(days=settings.history_retention_days),
                                   max_rows=settings.history_max_rows)
