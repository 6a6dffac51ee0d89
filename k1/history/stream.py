"""The history stream: where task history records wait for the recorder, and their shape.

One ``XADD`` per record (:func:`add`), queued on a pipeline someone else executes: the
event publisher's flush (:mod:`k1.events`, for :func:`k1.history.capture.capture`) or a
caller's own pipeline (beat's fire batch). It imports nothing of K1, so that the
publisher can write records without depending on the capture side.
"""

from __future__ import annotations

import json
from typing import Any

STREAM_KEY = "k1:history:stream"
# The stream holds what waits for the recorder: it must outlast a recorder or database
# outage of minutes. 1,000,000 records is about 30 minutes at 100 tasks/s (six records a
# task) and at most ~2.5 GB of Redis with every record at its bound (capture.ARGS_LIMIT
# twice), ~250 MB with ordinary ones. Approximate trimming (MAXLEN ~) costs nothing.
STREAM_MAXLEN = 1_000_000
RECORD_FIELD = "r"  # the stream entry's one field: the record as JSON
# What a record holds beyond its task_event (k1.history.capture): kept by history, not
# sent to the dashboard with the event.
RECORD_ONLY_FIELDS = frozenset({"id", "queue", "args", "kwargs", "schedule", "replay_of",
                                "replay_edited", "workflow_id", "conductor_task_id"})


def add(pipe: Any, record: dict[str, Any]) -> None:
    """Queue the ``XADD`` of ``record`` on ``pipe`` (a redis-py pipeline)."""
    pipe.xadd(STREAM_KEY, {RECORD_FIELD: json.dumps(record, default=str)},
              maxlen=STREAM_MAXLEN, approximate=True)
