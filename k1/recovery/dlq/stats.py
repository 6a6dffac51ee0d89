"""What the DLQ holds, in figures: depth, split by task and exception, oldest death, daily
average depth, and the depth snapshots that average is made of.

Depth and splits come from ``dlq_counts`` (a few rows per project, kept by triggers), so
they cost the same at a million letters as at ten.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, true

from k1.db import reading, session_scope
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
    with reading() as connection:
        rows = connection.execute(_figures(scope)).all()
    for row in rows:
        if row.task_name is not None:  # no row of counts: the outer join's one empty row
            by_task[row.task_name] += int(row.dead)
            by_exception[row.exception_type] += int(row.dead)
    depth = sum(by_task.values())
    oldest, snapshots, snapshot_depths = rows[0].oldest, rows[0].snapshots, rows[0].depths
    return {
        "depth": depth,
        "oldest_at": iso(oldest),
        "daily_avg_depth": round(snapshot_depths / snapshots, 2) if snapshots else depth,
        "by_task": dict(by_task),
        "by_exception": dict(by_exception),
    }


def summary(scope: frozenset[str] | None = None) -> dict[str, Any]:
    """Depth, oldest death and daily average only: what the metrics need."""
    figures = stats(scope)
    return {key: figures[key] for key in ("depth", "oldest_at", "daily_avg_depth")}


def _figures(scope: frozenset[str] | None) -> Select[Any]:
    """Everything the stats show in one statement (one round trip, even under load): the
    oldest death and the day's snapshots (one row), joined to the count rows in scope.
    """
    counts = (select(DeadLetterCount.task_name, DeadLetterCount.exception_type,
                     func.sum(DeadLetterCount.dead).label("dead"))
              .where(*_counted(scope))
              .group_by(DeadLetterCount.task_name, DeadLetterCount.exception_type)
              .subquery())
    # The (status, died_at) and (project_id, died_at) indexes answer from their first entry.
    oldest = (select(func.min(DeadLetter.died_at).label("oldest"))
              .where(*LetterFilter(status="dead", scope=scope).where()).subquery())
    total = DepthSnapshot.project_id == ALL_PROJECTS
    projects = total if scope is None else DepthSnapshot.project_id.in_(sorted(scope))
    daily = (select(func.count().filter(total).label("snapshots"),
                    func.coalesce(func.sum(DepthSnapshot.depth).filter(projects), 0)
                    .label("depths"))
             .where(DepthSnapshot.taken_at >= datetime.now(UTC) - DAILY_WINDOW).subquery())
    return (select(oldest.c.oldest, daily.c.snapshots, daily.c.depths, counts.c.task_name,
                   counts.c.exception_type, counts.c.dead)
            .select_from(oldest.join(daily, true()).outerjoin(counts, true())))


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
