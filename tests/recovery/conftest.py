"""Helpers for the recovery tests: task states through the API, letters from the store."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import API
from tests.support import wait_for


def wait_task(api: API, task_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    seen: list[str] = []

    def probe() -> dict[str, Any] | None:
        body = api.get(f"/api/tasks/{task_id}").json()
        if not seen or seen[-1] != body.get("state"):
            seen.append(body.get("state"))
        return body if body.get("state") in states else None

    return wait_for(probe, timeout=timeout, interval=0.1,
                    message=lambda: f"task {task_id} never reached {states}; seen {seen}")


def letters_of(task_id: str) -> list[Any]:
    from sqlalchemy import select

    from k1.db import session_scope
    from k1.recovery.dlq.models import DeadLetter

    with session_scope() as session:
        return list(session.scalars(select(DeadLetter).where(DeadLetter.task_id == task_id)))


def wait_letter(task_id: str, timeout: float = 60) -> Any:
    return wait_for(lambda: (letters_of(task_id) or [None])[0], timeout=timeout, interval=0.1,
                    message=f"no dead letter for task {task_id}")


def post_task(api: API, task: str, project_id: str = "acme", *, retry: dict | None = None,
              queue: str | None = None, **kwargs: Any) -> str:
    """Start a task through the API, or through the same submit path in-process when the
    call needs per-call retry overrides or a queue (which the API does not expose).
    """
    if retry is None and queue is None:
        response = api.post("/api/tasks", json={"task": task, "kwargs": kwargs,
                                                "project_id": project_id})
        assert response.status_code == 202, response.text
        return response.json()["task_id"]
    from k1.tasks.submissions import submit

    options = {"queue": queue} if queue else {}
    return submit(task, kwargs=kwargs, project_id=project_id, user_id="ada",
                  headers={"k1_retry": retry} if retry else None, **options)


@pytest.fixture
def operator(web: str, make_token) -> API:
    return API(web, make_token("ops", "*"))
