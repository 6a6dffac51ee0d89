"""What the DLQ holds, in figures: depth, split by task and exception, oldest death, daily
average depth, and the depth snapshots that average is made of.

Depth and splits come from ``dlq_counts`` (a few rows per project, kept by triggers), so
they cost the same at a million letters as at ten.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from k1.db import session_scope
from k1.recovery.dlq.filters import LetterFilter
from k1.recovery.dlq.models import (
    ALL_PROJECTS,
    NO_PROJECT,
    DeadLetter,
    DeadLetterCount,
    DepthSnapshot,
)
from k1.recovery.dlq.rows import iso

DAILY_WINDOW = timedelta(days=1)


def stats(scope: frozenset[str] | None = None) -> dict[str, Any]:
    """Depth (letters still dead), its split by task and exception, the oldest death, and
    the average depth over the last day's snapshots.
    """
    by_task: Counter[str] = Counter()
    by_exception: Counter[str] = Counter()
    with session_scope() as session:
        # One read of the (few) count rows in scope; both splits are summed from it.
        for task, exception, dead in session.execute(
                select(DeadLetterCount.task_name, DeadLetterCount.exception_type,
                       func.sum(DeadLetterCount.dead)).where(*_counted(scope))
                .group_by(DeadLetterCount.task_name, DeadLetterCount.exception_type)):
            by_task[task] += int(dead)
            by_exception[exception] += int(dead)
        figures = _summary(session, scope, depth=sum(by_task.values()))
    return {**figures, "by_task": dict(by_task), "by_exception": dict(by_exception)}


def summary(scope: frozenset[str] | None = None) -> dict[str, Any]:
    """Depth, oldest death and daily average only: what the metrics need."""
    with session_scope() as session:
        return _summary(session, scope)


def snapshot_depth() -> int:
    """Record the current depth, in total and per project; returns the total."""
    now = datetime.now(UTC)
    with session_scope() as session:
        per_project = session.execute(
            select(DeadLetterCount.project_id, func.sum(DeadLetterCount.dead))
            .group_by(DeadLetterCount.project_id)).all()
        total = sum(int(depth) for _, depth in per_project)
        session.add(DepthSnapshot(taken_at=now, project_id=ALL_PROJECTS, depth=total))
        session.add_all(DepthSnapshot(taken_at=now, project_id=project, depth=int(depth))
                        for project, depth in per_project if project != NO_PROJECT and depth)
    return total


def _counted(scope: frozenset[str] | None) -> list[ColumnElement[bool]]:
    conditions = [DeadLetterCount.dead > 0]
    if scope is not None:
        conditions.append(DeadLetterCount.project_id.in_(sorted(scope)))
    return conditions


def _summary(session: Session, scope: frozenset[str] | None,
             depth: int | None = None) -> dict[str, Any]:
    if depth is None:
        depth = int(session.scalar(select(func.coalesce(func.sum(DeadLetterCount.dead), 0))
                                   .where(*_counted(scope))) or 0)
    # The (status, died_at) and (project_id, died_at) indexes answer this from their first
    # entries; no count is needed.
    oldest = session.scalar(select(func.min(DeadLetter.died_at))
                            .where(*LetterFilter(status="dead", scope=scope).where()))
    daily_avg = _daily_average(session, scope)
    return {
        "depth": depth,
        "oldest_at": iso(oldest),
        "daily_avg_depth": depth if daily_avg is None else round(daily_avg, 2),
    }


def _daily_average(session: Session, scope: frozenset[str] | None) -> float | None:
    since = datetime.now(UTC) - DAILY_WINDOW
    total = DepthSnapshot.project_id == ALL_PROJECTS
    projects = total if scope is None else DepthSnapshot.project_id.in_(sorted(scope))
    # One statement: how many snapshots were taken, and the scope's depth summed over them.
    snapshots, depth = session.execute(
        select(func.count().filter(total),
               func.coalesce(func.sum(DepthSnapshot.depth).filter(projects), 0))
        .where(DepthSnapshot.taken_at >= since)).one()
    if not snapshots:
        return None
    return float(depth) / snapshots
