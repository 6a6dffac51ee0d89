"""History in the answers of ``GET /api/tasks`` and ``GET /api/tasks/<id>``."""

from __future__ import annotations

from typing import Any

from k1.history import store
from k1.history.models import TaskAttempt, TaskRun

FINAL = ("SUCCESS", "FAILURE", "REVOKED")


def with_history(body: dict[str, Any],
                 found: tuple[TaskRun, list[TaskAttempt]] | None) -> dict[str, Any]:
    """The result backend's answer plus ``attempts`` and ``links``, and history's state
    where the backend's is stale: a run lost with its worker (or handed back) leaves the
    backend at STARTED while the task waits in the queue again, and the backend says PENDING for
    what it never heard of (a task received but not started) or has forgotten.
    """
    if found is None:
        return {**body, **arguments(None), "attempts": [], "links": store.links_of(None)}
    row, attempts = found
    state = body.get("state")
    requeued = row.state in ("REQUEUED", "RECEIVED") and any(
        a.outcome in ("lost", "requeued") for a in attempts)
    if (state == "STARTED" and requeued) or (state == "PENDING" and row.state != "PENDING"):
        body = {**body, "state": row.state}
    return {**body, **arguments(row), "attempts": [store.attempt_as_dict(a) for a in attempts],
            "links": store.links_of(row)}


def arguments(row: TaskRun | None) -> dict[str, Any]:
    """The task's queue and arguments as history holds them (None when it has no row;
    arguments past 1,000 characters of JSON are a string ending in ``…[truncated]``)."""
    return {"queue": row and row.queue, "args": row and row.args, "kwargs": row and row.kwargs}


def from_history(row: TaskRun, attempts: list[TaskAttempt]) -> dict[str, Any]:
    """The single-task answer built from history alone (the backend has forgotten it)."""
    error = ({"type": row.error_type, "message": row.error_message}
             if row.error_type and row.state != "SUCCESS" else None)
    return {
        "task_id": row.task_id, "task": row.task_name, "project_id": row.project_id,
        "user_id": row.user_id,
        "submitted_at": row.submitted_at.timestamp() if row.submitted_at else None,
        "state": row.state, "retries": max(row.attempts - 1, 0),
        "date_done": store.iso_time(row.finished_at) if row.state in FINAL else None,
        "result": row.result if row.state == "SUCCESS" else None, "error": error,
        **arguments(row), "attempts": [store.attempt_as_dict(a) for a in attempts],
        "links": store.links_of(row),
    }

