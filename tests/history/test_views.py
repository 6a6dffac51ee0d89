"""Which state GET /api/tasks/<id> answers when the result backend and history differ."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from k1.history.views import with_history


def found(state: str, *outcomes: str) -> tuple[Any, list[Any]]:
    row = SimpleNamespace(state=state, queue="celery", args=[1], kwargs={"k": "v"},
                          letter_id=None, workflow_id=None, conductor_task_id=None,
                          schedule=None, replay_of=None, replay_edited=None)
    attempts = [SimpleNamespace(attempt=1, run=n, worker="w", outcome=outcome, received_at=None,
                                started_at=None, ended_at=None, runtime_ms=None,
                                exception_type=None, exception_message=None)
                for n, outcome in enumerate(outcomes, 1)]
    return row, attempts


def test_a_lost_run_overrides_the_backends_stale_started() -> None:
    assert with_history({"state": "STARTED"}, found("REQUEUED", "lost"))["state"] == "REQUEUED"
    assert with_history({"state": "STARTED"},
                        found("RECEIVED", "lost", "running"))["state"] == "RECEIVED"
    assert with_history({"state": "STARTED"},
                        found("REQUEUED", "requeued"))["state"] == "REQUEUED"


def test_history_lagging_behind_the_backend_does_not_override_it() -> None:
    assert with_history({"state": "STARTED"}, found("RECEIVED", "running"))["state"] == "STARTED"
    assert with_history({"state": "SUCCESS"}, found("STARTED", "running"))["state"] == "SUCCESS"


def test_history_answers_what_the_backend_never_heard_of() -> None:
    body = with_history({"state": "PENDING"}, found("RECEIVED", "running"))
    assert body["state"] == "RECEIVED" and body["attempts"][0]["outcome"] == "running"
    assert (body["queue"], body["args"], body["kwargs"]) == ("celery", [1], {"k": "v"})
    assert with_history({"state": "PENDING"}, None) == {
        "state": "PENDING", "queue": None, "args": None, "kwargs": None, "attempts": [],
        "links": dict.fromkeys(
            ("dead_letter_id", "workflow_id", "conductor_task_id", "schedule", "replay_of",
             "replay_edited"))}
