"""A plain Celery app for ``bench/platform.py``: Celery's defaults plus the durability
settings named in ``BENCH_SETTINGS`` (comma-separated, see ``SETTINGS``), one no-op task.

    BENCH_SETTINGS=results,acks_late celery -A bench.platform_app worker --concurrency 2
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

# Each of K1's durability settings (celeryconfig.py), as the bench turns it on by itself.
SETTINGS: dict[str, dict[str, Any]] = {
    "results": {"result_backend": os.environ.get("REDIS_URL", "")},
    "track_started": {"task_track_started": True},  # only with results: a STARTED write
    "extended": {"result_extended": True},  # only with results: name, args with it
    "acks_late": {"task_acks_late": True, "task_reject_on_worker_lost": True,
                  "worker_prefetch_multiplier": 1},
    "events": {"worker_send_task_events": True, "task_send_sent_event": True},
    # not a durability setting: acks_late with Celery's default prefetch, listed last
    "prefetch4": {"worker_prefetch_multiplier": 4},
    # K1's broker transport (k1/broker.py: doorbell wait, one Lua fetch into unacked)
    "k1_transport": {"broker_transport": "k1.broker:Transport"},
}

app = Celery("bench", broker=os.environ.get("REDIS_URL", ""))
app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
for name in filter(None, os.environ.get("BENCH_SETTINGS", "").split(",")):
    app.conf.update(SETTINGS[name])


@app.task(name="bench.platform_app.noop")
def noop(project_id: str) -> dict[str, Any]:
    return {"project_id": project_id, "runs": 1}  # what k1.tasks.demo.flaky returns
