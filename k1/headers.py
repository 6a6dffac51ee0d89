"""Names of the Celery message headers K1 puts on tasks, in one place.

They travel with a task through retries and replays (Celery keeps custom headers) and
are read back from ``task.request``.
"""

from __future__ import annotations

from typing import Any

PROJECT = "k1_project_id"  # the project a task works for: rooms, DLQ scope
USER = "k1_user_id"  # who started it
RETRY_POLICY = "k1_retry"  # per-call retry policy overrides: {"attempts": 5, ...}
IDEMPOTENCY_KEY = "k1_idempotency_key"  # side effects are keyed by it; kept on replay
FIRST_FAILURE = "k1_first_failed_at"  # ISO time of the first failed attempt
DEFERRALS = "k1_deferrals"  # times an open breaker deferred the task
CONDUCTOR_WORKFLOW = "k1_conductor_workflow_id"
CONDUCTOR_TASK = "k1_conductor_task_id"
REPLAY_OF = "k1_replay_of"  # the dead letter a replayed task came from
REPLAY_EDITED = "k1_replay_edited"  # what a replay changed: "args", "kwargs" or "args,kwargs"
SCHEDULE = "k1_schedule"  # the schedule a task was sent for (beat and "run now")
DUE_AT = "k1_due_at"  # epoch seconds the fire was due at (beat fires only)
LIMIT_WAITS = "k1_limit_waits"  # times a limit made the task wait (k1.flow; no attempt spent)
LIMIT_RESERVED = "k1_limit_reserved"  # rate limits whose start this message has reserved


def project_of(task: Any, kwargs: dict[str, Any] | None = None) -> str | None:
    """The project a running task works for: its ``project_id`` kwarg, else its header."""
    return project_from(task.request.kwargs if kwargs is None else kwargs, task.request)


def project_from(kwargs: Any, headers: Any) -> str | None:
    """The project of a call: its ``project_id`` kwarg, else K1's project header in
    ``headers`` (anything with ``get``: a message's headers, a task's request)."""
    value = (kwargs.get("project_id") if isinstance(kwargs, dict) else None) \
        or headers.get(PROJECT)
    return None if value is None else str(value)
