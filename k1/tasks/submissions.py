"""Starting tasks on behalf of a user, and remembering who started what.

Every start from the API, the CLI or the dashboard goes through :func:`submit`, which
checks the task and its arguments, stamps project and user into headers, and records
the submission in Redis so that ``GET /api/tasks/<id>`` can answer 404 for ids it never
issued and 403 for other projects' tasks::

    task_id = submit("k1.tasks.demo.flaky", kwargs={"fail_times": 1}, project_id="acme")
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery.result import AsyncResult
from celery.utils.time import maybe_timedelta

from k1 import headers as k1_headers
from k1.celery import app
from k1.connections import get_redis
from k1.history import capture as history
from k1.tasks import public_task_names

SUBMISSION_KEY = "k1:task:{}"


class SubmissionError(ValueError):
    """The task or its arguments are wrong; the message says how."""


@dataclass(frozen=True)
class Submission:
    task_id: str
    task: str
    project_id: str
    user_id: str | None
    submitted_at: float


def submit(
    task_name: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    project_id: str,
    user_id: str | None = None,
    headers: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    """Start ``task_name`` for ``project_id``; ``project_id`` is passed as a keyword."""
    known = public_task_names()
    if task_name not in known:
        raise SubmissionError(f"unknown task {task_name!r}; known tasks: {', '.join(known)}")
    task = app.tasks[task_name]
    kwargs = dict(kwargs or {})
    if kwargs.setdefault("project_id", project_id) != project_id:
        raise SubmissionError(
            f"kwargs.project_id {kwargs['project_id']!r} differs from project_id {project_id!r}"
        )
    try:
        inspect.signature(task.run).bind(*args, **kwargs)
    except TypeError as exc:
        raise SubmissionError(
            f"arguments do not match {task_name}{inspect.signature(task.run)}: {exc}"
        ) from None
    headers = {**(headers or {}), k1_headers.PROJECT: project_id, k1_headers.USER: user_id}
    sent_at = time.time()  # before sending: the task may start before apply_async returns
    result = task.apply_async(args=list(args), kwargs=kwargs, headers=headers, **options)
    history.capture(history.submitted(result.id, task_name, args, kwargs, project_id=project_id,
                                      user_id=user_id, headers=headers, ts=sent_at,
                                      queue=options.get("queue")))
    record(Submission(result.id, task_name, project_id, user_id, time.time()))
    return result.id


def record(submission: Submission) -> None:
    key = SUBMISSION_KEY.format(submission.task_id)
    fields = {
        "task": submission.task,
        "project_id": submission.project_id,
        "user_id": submission.user_id or "",
        "submitted_at": submission.submitted_at,
    }
    ttl = int(maybe_timedelta(app.conf.result_expires).total_seconds())  # as long as results
    get_redis().pipeline().hset(key, mapping=fields).expire(key, ttl).execute()


def lookup(task_id: str) -> Submission | None:
    fields = get_redis().hgetall(SUBMISSION_KEY.format(task_id))
    if not fields:
        return None
    return Submission(
        task_id, fields["task"], fields["project_id"], fields["user_id"] or None,
        float(fields["submitted_at"]),
    )


def status(submission: Submission) -> dict[str, Any]:
    """The submission with its current Celery state and outcome."""
    result = AsyncResult(submission.task_id, app=app)
    state = result.state
    body: dict[str, Any] = {
        "task_id": submission.task_id,
        "task": submission.task,
        "project_id": submission.project_id,
        "user_id": submission.user_id,
        "submitted_at": submission.submitted_at,
        "state": state,
        "retries": getattr(result, "retries", None),
        "date_done": result.date_done.isoformat() if result.date_done else None,
        "result": None,
        "error": None,
    }
    if state == "SUCCESS":
        body["result"] = result.result
    elif state in ("FAILURE", "RETRY"):
        exc = result.result
        body["error"] = {"type": type(exc).__name__, "message": str(exc)}
    return body
