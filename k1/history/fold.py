"""From a task's records to its history row and its attempts: pure, no database.

The recorder keeps every record and folds them all again whenever one arrives, so the
result depends only on the set of records — not on the order batches commit in, nor on a
record delivered twice. Records are taken in time order (``ts``; ties by the order of
a task's life), which is also the order they happened in: one task's transitions
follow each other, so their times do too.

The state says what is true:

- a ``received`` (or a second ``started``) of an attempt whose run is still open means
  that run's worker was lost and the message was delivered again: the old run ends
  ``lost``;
- a ``lost`` record (the pool process died, Celery gave the message back) ends the run
  ``lost``, a ``requeued`` record (the message handed back for another reason: a paused
  queue) ends it ``requeued``; either way the task is ``REQUEUED`` until a worker
  receives it again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

# A task's life in order, to order records stamped with the same time.
RANK = {"submitted": 0, "received": 1, "started": 2, "lost": 3, "requeued": 3, "retried": 3,
        "failed": 3, "dead": 3, "succeeded": 3}
LINKS = ("schedule", "replay_of", "replay_edited", "workflow_id", "conductor_task_id")
IDENTITY = ("task_name", "project_id", "user_id", "queue", "args", "kwargs")


@dataclass
class Run:
    run: int
    attempt: int
    received_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str | None = None
    outcome: str = "running"
    exception_type: str | None = None
    exception_message: str | None = None
    runtime_ms: float | None = None

    @property
    def open(self) -> bool:
        return self.ended_at is None and self.outcome == "running"


def order(record: dict[str, Any]) -> tuple[float, int, str]:
    return (float(record.get("ts") or 0), RANK.get(record.get("type", ""), 3),
            str(record.get("id", "")))


def fold(task_id: str, records: list[dict[str, Any]]
         ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``task_history`` row and the ``task_attempts`` rows of ``records``."""
    task: dict[str, Any] = {"task_id": task_id, "state": "PENDING", "attempts": 0,
                            "submitted_at": None, "started_at": None, "finished_at": None,
                            "runtime_ms": None, "worker": None, "result": None,
                            "error_type": None, "error_message": None, "letter_id": None,
                            **{key: None for key in IDENTITY + LINKS}}
    runs: list[Run] = []
    first_start: datetime | None = None
    records = sorted({r.get("id") or id(r): r for r in records}.values(), key=order)
    for record in records:
        kind, at = record.get("type"), _time(record.get("ts"))
        attempt = int(record.get("attempt") or 1)
        for key in IDENTITY + LINKS:  # the first record that knows a value gives it
            if task[key] is None and record.get(key) not in (None, ""):
                value = record[key]  # text columns, whatever a header carried (an int id)
                task[key] = value if key in ("args", "kwargs") else str(value)
        if kind == "submitted":
            task["submitted_at"] = at
            continue
        task["attempts"] = max(task["attempts"], attempt)
        if kind == "received":
            _lose_open(runs, attempt, at)
            runs.append(Run(len(runs) + 1, attempt, received_at=at, worker=record.get("worker")))
            task["state"] = "RECEIVED"
        elif kind == "started":
            run = _open_run(runs, attempt)
            if run is None or run.started_at is not None:
                _lose_open(runs, attempt, at)
                run = Run(len(runs) + 1, attempt)
                runs.append(run)
            run.started_at, run.worker = at, record.get("worker") or run.worker
            first_start = first_start or at
            task.update(state="STARTED", started_at=at, finished_at=None)
        else:
            run = _open_run(runs, attempt) or _last_run(runs, attempt)
            if run is None:  # its received and started were never captured
                run = Run(len(runs) + 1, attempt, worker=record.get("worker"))
                runs.append(run)
            _end(task, run, record, at)
        if record.get("worker"):
            task["worker"] = record["worker"]
    task["created_at"] = task["submitted_at"] or (_time(records[0].get("ts")) if records
                                                   else datetime.now(UTC))
    if first_start and task["submitted_at"]:
        task["queue_wait_ms"] = round((first_start - task["submitted_at"]).total_seconds()
                                      * 1000, 3)
    else:
        task["queue_wait_ms"] = None
    task["search_text"] = search_text(task)
    return task, [{"task_id": task_id, **asdict(run)} for run in runs]


def _end(task: dict[str, Any], run: Run, record: dict[str, Any], at: datetime) -> None:
    """A record that ends a run: lost, requeued, retried, succeeded, failed or dead."""
    kind, state = record.get("type"), record.get("state")
    exception = record.get("exception")
    if kind in ("lost", "requeued"):
        outcome, task_state = kind, "REQUEUED"
    elif kind == "retried":
        outcome, task_state = ("deferred" if record.get("deferred") else "retried"), "RETRY"
    elif kind == "succeeded":
        outcome, task_state = "succeeded", "SUCCESS"
    elif kind == "dead":
        outcome, task_state = "dead", "FAILURE"
        task["letter_id"] = record.get("letter_id") or task["letter_id"]
    elif state == "REVOKED":
        outcome, task_state = "revoked", "REVOKED"
    else:  # failed: after ``dead`` the run stays dead
        outcome, task_state = ("dead" if run.outcome == "dead" else "failed"), "FAILURE"
    if not (run.open or run.outcome == outcome or kind == "failed"):
        return  # the run ended otherwise already (e.g. succeeded, then its process died)
    run.outcome = outcome
    run.ended_at = run.ended_at or at
    run.runtime_ms = record.get("runtime_ms") or run.runtime_ms
    if exception:
        run.exception_type, run.exception_message = exception, record.get("message")
    run.worker = run.worker or record.get("worker")
    task["state"] = task_state
    task["runtime_ms"] = run.runtime_ms
    if task_state in ("SUCCESS", "FAILURE", "REVOKED"):
        task["finished_at"] = at
    if kind == "succeeded":
        task.update(result=record.get("result"), error_type=None, error_message=None)
    elif exception:
        task.update(error_type=exception, error_message=record.get("message"))


def _open_run(runs: list[Run], attempt: int) -> Run | None:
    for run in reversed(runs):
        if run.attempt == attempt and run.open:
            return run
    return None


def _last_run(runs: list[Run], attempt: int) -> Run | None:
    for run in reversed(runs):
        if run.attempt == attempt:
            return run
    return None


def _lose_open(runs: list[Run], attempt: int, at: datetime) -> None:
    """An attempt delivered again: whatever run of it was still open lost its worker."""
    run = _open_run(runs, attempt)
    if run is not None:
        run.outcome, run.ended_at = "lost", at
        run.exception_type = run.exception_type or "WorkerLost"
        run.exception_message = run.exception_message or "delivered again before it ended"


def search_text(task: dict[str, Any]) -> str:
    """What ``q`` searches besides the id: arguments and errors."""
    parts = [task.get("args"), task.get("kwargs"), task.get("error_type"),
             task.get("error_message")]
    return " ".join(part if isinstance(part, str) else _json(part) for part in parts
                    if part not in (None, "", [], {}))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _time(ts: Any) -> datetime:
    return datetime.fromtimestamp(float(ts or 0), UTC)
