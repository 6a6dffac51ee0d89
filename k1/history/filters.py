"""Which tasks a history search is about, parsed once from a query string.

    f = TaskFilter.parse({"state": "FAILURE", "q": "timeout", "since": "2026-11-26"})
    f.where()        # SQLAlchemy conditions

Bad input raises :class:`FilterError` naming the field (the dead-letter filters' rules
for times and limits).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_

from k1.db.keyset import Keyset
from k1.history.models import STATES, TaskRun
from k1.recovery.dlq.filters import FilterError, _check_text, parse_time

FIELDS = ("project_id", "task", "state", "worker", "since", "until", "q")
MAX_QUERY = 200  # characters of ``q``: longer is no search anybody types
# Newest first (``created_at``); the cursor is the last task's (created_at, task_id).
TASK_PAGES = Keyset(TaskRun.created_at, TaskRun.task_id, error=FilterError)


@dataclass(frozen=True)
class TaskFilter:
    project_id: str | None = None
    task: str | None = None
    state: str | None = None
    worker: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None
    scope: frozenset[str] | None = None  # the projects the caller may see; None: all

    @classmethod
    def parse(cls, params: Mapping[str, Any], *, extra: tuple[str, ...] = ()) -> TaskFilter:
        unknown = set(params) - set(FIELDS) - set(extra)
        if unknown:
            raise FilterError(f"unknown filter(s): {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(FIELDS + extra)}")
        for name in ("project_id", "task", "state", "worker", "q"):
            _check_text(name, params.get(name))  # what PostgreSQL can compare with
        state = (params.get("state") or "").upper() or None
        if state and state not in STATES:
            raise FilterError(f"state: must be one of {', '.join(STATES)}, got {state!r}")
        q = params.get("q") or None
        if q and len(q) > MAX_QUERY:
            raise FilterError(f"q: at most {MAX_QUERY} characters, got {len(q)}")
        return cls(project_id=params.get("project_id") or None, task=params.get("task") or None,
                   state=state, worker=params.get("worker") or None,
                   since=parse_time("since", params.get("since")),
                   until=parse_time("until", params.get("until")), q=q)

    def scoped(self, projects: frozenset[str] | None) -> TaskFilter:
        """Limit to ``projects`` (None: no limit)."""
        return replace(self, scope=projects)

    def where(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        for column, value in ((TaskRun.project_id, self.project_id),
                              (TaskRun.task_name, self.task), (TaskRun.state, self.state),
                              (TaskRun.worker, self.worker)):
            if value:
                conditions.append(column == value)
        if self.since:
            conditions.append(TaskRun.created_at >= self.since)
        if self.until:
            conditions.append(TaskRun.created_at < self.until)
        if self.q:
            # ILIKE (not lower() LIKE) so that PostgreSQL uses the trigram index.
            pattern = self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append(or_(TaskRun.task_id.like(f"{pattern}%", escape="\\"),
                                  TaskRun.search_text.ilike(f"%{pattern}%", escape="\\")))
        if self.scope is not None:
            conditions.append(TaskRun.project_id.in_(sorted(self.scope)))
        return conditions
