"""History retention: by age, then by row count, oldest first; attempts and records go too."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select


def finished_task(task_id: str, at: float) -> list[dict[str, Any]]:
    base = {"task_id": task_id, "attempt": 1, "project_id": "retention", "worker": "w@r"}
    return [{**base, "id": uuid.uuid4().hex, "type": kind, "ts": at + offset}
            for kind, offset in (("received", 0), ("started", 0.1), ("succeeded", 0.2))]


def counts(task_ids: list[str]) -> tuple[int, int, int]:
    from k1.db import session_scope
    from k1.history.models import TaskAttempt, TaskRecord, TaskRun

    with session_scope() as session:
        found = [session.scalar(select(func.count()).select_from(model)
                                .where(model.task_id.in_(task_ids)))
                 for model in (TaskRun, TaskAttempt, TaskRecord)]
    return found[0] or 0, found[1] or 0, found[2] or 0


def test_old_tasks_then_the_oldest_beyond_the_cap_are_deleted(
        services: dict[str, object], unique: str) -> None:
    from k1.db import session_scope
    from k1.history.models import TaskRun
    from k1.history.store import enforce_retention, write

    now = time.time()
    old = [f"{unique}-old-{n}" for n in range(3)]
    recent = [f"{unique}-new-{n}" for n in range(5)]
    write([r for n, t in enumerate(old) for r in finished_task(t, now - 40 * 86_400 + n)]
          + [r for n, t in enumerate(recent) for r in finished_task(t, now - 29 * 86_400 + n)])
    assert counts(old) == (3, 3, 9)
    with session_scope() as session:
        total = session.scalar(select(func.count()).select_from(TaskRun)) or 0
    # Ours are older than any other test's tasks, so a cap two below what stays after the
    # age limit drops our oldest two recent ones.
    result = enforce_retention(max_age=timedelta(days=30), max_rows=total - 3 - 2)
    assert result["expired"] >= 3 and result["over_limit"] == 2
    assert counts(old) == (0, 0, 0)  # their attempts and records went with them
    assert counts(recent[:2]) == (0, 0, 0)
    assert counts(recent[2:]) == (3, 3, 9)


def test_retention_is_a_builtin_schedule_of_a_registered_task() -> None:
    from k1.celery import app
    from k1.scheduling.builtins import BUILTINS, registered_builtin_tasks

    (spec,) = [spec for spec in BUILTINS if spec.name == "history-retention"]
    assert spec.task == "k1.history.enforce_retention" and spec.cron == "30 2 * * *"
    assert spec.task in registered_builtin_tasks(app)
