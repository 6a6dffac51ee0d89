"""Task history in the database: the recorder's batch write, the API's reads, retention.

    write(records)                                   # one transaction, idempotent
    page, cursor = search(TaskFilter(state="FAILURE"), limit=50)
    task = get(task_id)                              # row and attempts, or None

A batch write locks the rows of the tasks it touches (in task id order, so that two
recorders never deadlock), stores the records it has not seen (a record's ``id`` makes a
second delivery a no-op), and folds each touched task again from all its records
(:mod:`k1.history.fold`). Whatever the order batches commit in, the rows end up as if
every record had arrived once, in order.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, String, delete, func, insert, select, update
from sqlalchemy.orm import Session

from k1.db import insert_or_skip, session_scope
from k1.history.filters import TASK_PAGES, TaskFilter
from k1.history.fold import fold
from k1.history.models import TaskAttempt, TaskRecord, TaskRun
from k1.recovery.dlq.storable import escape

RETENTION_BATCH = 10_000  # tasks deleted per statement, to keep locks short
MAX_JSON_DEPTH = 64  # deeper JSON is cut: far below PostgreSQL's limit, above any honest value
_LENGTHS = {column.name: column.type.length for column in TaskRun.__table__.columns
            if isinstance(column.type, String) and column.type.length}
_ATTEMPT_LENGTHS = {column.name: column.type.length for column in TaskAttempt.__table__.columns
                    if isinstance(column.type, String) and column.type.length}


# -- writing ---------------------------------------------------------------------------

def write(records: Sequence[dict[str, Any]]) -> int:
    """Store ``records`` and fold the tasks they touch; returns how many were new."""
    records = [_normalized(storable(record)) for record in records if record.get("task_id")]
    if not records:
        return 0
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_task[record["task_id"]].append(record)
    task_ids = sorted(by_task)
    with session_scope() as session:
        stubs = [{"task_id": task_id, "state": "PENDING", "attempts": 0, "search_text": "",
                  "created_at": _time(min(r["ts"] for r in by_task[task_id]))}
                 for task_id in task_ids]
        session.execute(insert_or_skip(TaskRun, "task_id"), stubs)
        session.execute(select(TaskRun.task_id).where(TaskRun.task_id.in_(task_ids))
                        .order_by(TaskRun.task_id).with_for_update())
        new = session.scalars(
            insert_or_skip(TaskRecord, "id").returning(TaskRecord.id),
            [{"id": r["id"], "task_id": r["task_id"], "ts": r["ts"], "type": r["type"], "body": r}
             for r in records]).all()
        _refold(session, task_ids)
    return len(new)


def _refold(session: Session, task_ids: list[str]) -> None:
    known: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for task_id, body in session.execute(
            select(TaskRecord.task_id, TaskRecord.body).where(TaskRecord.task_id.in_(task_ids))):
        known[task_id].append(body)
    now = datetime.now(UTC)
    rows, attempts = [], []
    for task_id in task_ids:
        row, runs = fold(task_id, known[task_id])
        rows.append({**_clipped(row, _LENGTHS), "updated_at": now})
        attempts += [_clipped(run, _ATTEMPT_LENGTHS) for run in runs]
    session.execute(update(TaskRun), rows)
    session.execute(delete(TaskAttempt).where(TaskAttempt.task_id.in_(task_ids)))
    if attempts:
        session.execute(insert(TaskAttempt), attempts)


# -- what the database accepts ---------------------------------------------------------

def storable(value: Any, depth: int = 0) -> Any:
    """``value`` (a record from JSON) as PostgreSQL takes it: no NUL characters or lone
    surrogates in text (written ``\\x00``, ``\\udcxx``), no NaN, no JSON nested deeper than
    :data:`MAX_JSON_DEPTH`. Dead letters are repaired the same way.
    """
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict | list) and depth >= MAX_JSON_DEPTH:
        return f"<nested deeper than {MAX_JSON_DEPTH} levels>"
    if isinstance(value, dict):
        return {escape(str(key)): storable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [storable(item, depth + 1) for item in value]
    return value


def _normalized(record: dict[str, Any]) -> dict[str, Any]:
    """The fields the write and the fold rely on, of the right type whatever came in."""
    def number(value: Any, default: float) -> float:
        try:
            result = float(value)
        except (TypeError, ValueError):
            return default
        return result if math.isfinite(result) else default

    record["task_id"] = str(record["task_id"])
    record["id"] = str(record.get("id") or uuid.uuid4().hex)[:32]
    record["type"] = str(record.get("type"))[:16]
    record["ts"] = number(record.get("ts"), time.time())
    record["attempt"] = int(number(record.get("attempt"), 1))
    return record


def _clipped(row: dict[str, Any], lengths: dict[str, int]) -> dict[str, Any]:
    """String columns cut to their length (a worker or task name of 300 characters)."""
    return {key: (value[:lengths[key]] if key in lengths and isinstance(value, str) else value)
            for key, value in row.items()}


# -- reading ---------------------------------------------------------------------------

def search(filters: TaskFilter, *, limit: int = 50,
           cursor: str | None = None) -> tuple[list[TaskRun], str | None]:
    """A page of tasks, newest first, and the cursor of the next page."""
    return TASK_PAGES.page(select(TaskRun).where(*filters.where()), limit=limit, cursor=cursor)


def get(task_id: str) -> tuple[TaskRun, list[TaskAttempt]] | None:
    """A task's row and its attempts in order, or None when history has no record of it
    (or ``task_id`` is no id it could hold: NUL, lone surrogates, too long).
    """
    if len(task_id) > _LENGTHS["task_id"] or escape(task_id) != task_id:
        return None
    with session_scope() as session:
        row = session.get(TaskRun, task_id)
        if row is None:
            return None
        attempts = list(session.scalars(select(TaskAttempt).where(TaskAttempt.task_id == task_id)
                                        .order_by(TaskAttempt.run)))
    return row, attempts


def as_dict(row: TaskRun) -> dict[str, Any]:
    """The JSON form of a task in the list (the API's)."""
    body = {column.name: getattr(row, column.name) for column in TaskRun.__table__.columns
            if column.name != "search_text"}
    for key, value in body.items():
        if isinstance(value, datetime):
            body[key] = iso_time(value)
    body["replay_edited"] = edited(row.replay_edited)
    return body


def attempt_as_dict(attempt: TaskAttempt) -> dict[str, Any]:
    return {"attempt": attempt.attempt, "run": attempt.run, "worker": attempt.worker,
            "outcome": attempt.outcome, "received_at": iso_time(attempt.received_at),
            "started_at": iso_time(attempt.started_at),
            "ended_at": iso_time(attempt.ended_at),
            "runtime_ms": attempt.runtime_ms, "exception": attempt.exception_type,
            "message": attempt.exception_message}


def links_of(row: TaskRun | None) -> dict[str, Any]:
    """What a task is linked to (all None when history has no row)."""
    return {"dead_letter_id": row and row.letter_id, "workflow_id": row and row.workflow_id,
            "conductor_task_id": row and row.conductor_task_id,
            "schedule": row and row.schedule, "replay_of": row and row.replay_of,
            "replay_edited": edited(row.replay_edited if row else None)}


def edited(replay_edited: str | None) -> list[str] | None:
    """What an edited replay changed, as a list (``["kwargs"]``); None: no edit."""
    return replay_edited.split(",") if replay_edited else None


# -- housekeeping ----------------------------------------------------------------------

def enforce_retention(*, max_age: timedelta, max_rows: int) -> dict[str, int]:
    """Delete tasks first seen before ``max_age`` ago, then the oldest beyond ``max_rows``;
    their attempts and records go with them (ON DELETE CASCADE).
    """
    cutoff = datetime.now(UTC) - max_age
    expired = over_limit = 0
    while removed := _delete(select(TaskRun.task_id).where(TaskRun.created_at < cutoff)
                             .limit(RETENTION_BATCH)):
        expired += removed
    with session_scope() as session:
        excess = (session.scalar(select(func.count()).select_from(TaskRun)) or 0) - max_rows
    while excess > 0 and (removed := _delete(
            select(TaskRun.task_id).order_by(TaskRun.created_at, TaskRun.task_id)
            .limit(min(excess, RETENTION_BATCH)))):
        over_limit += removed
        excess -= removed
    return {"expired": expired, "over_limit": over_limit}


def _delete(ids: Any) -> int:
    """Delete the tasks ``ids`` selects, in a transaction of its own."""
    with session_scope() as session:
        result = session.execute(delete(TaskRun).where(TaskRun.task_id.in_(ids)))
        return cast("CursorResult[Any]", result).rowcount or 0


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def iso_time(value: datetime | None) -> str | None:
    """A stored time as ISO-8601 with its offset (UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive UTC datetimes
        value = value.replace(tzinfo=UTC)
    return value.isoformat()

