"""``POST /api/tasks`` starts a task; ``GET /api/tasks/<id>`` reads its state (with its
attempts and links from history); ``GET /api/tasks`` searches the history."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from k1.history import store as history_store
from k1.history import views as history_views
from k1.history.filters import MAX_QUERY, TaskFilter
from k1.history.models import STATES, TaskAttempt, TaskRun
from k1.recovery.dlq.filters import MAX_LIMIT, FilterError, parse_limit
from k1.tasks.submissions import (
    NotAllowed,
    SubmissionError,
    lookup,
    start,
    status,
    validate_project_id,
)
from k1.web.auth import authorize_project, current_principal, require_auth
from k1.web.contract import (
    Accepted,
    Body,
    Duplicate,
    Error,
    Name,
    ProjectId,
    Query,
    UniqueClaim,
    responses,
    validate,
)
from k1.web.errors import Answer, APIError, error_response
from k1.web.offload import blocking

log = logging.getLogger(__name__)
bp = Blueprint("tasks", __name__)


class NewTask(Body):
    task: Name
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    project_id: ProjectId


class TaskStatus(BaseModel):
    task_id: str
    task: str
    project_id: str
    state: str
    result: Any = None
    error: Any = None
    unique: UniqueClaim | None = None  # a unique task: its claim, while it holds one


@bp.post("/api/tasks")
@require_auth
@validate(json=NewTask, tags=("tasks",),
          resp=responses(HTTP_202=Accepted, HTTP_200=Duplicate, HTTP_403=Error))
def create_task(json: NewTask) -> Answer:
    """Start a public task for a project the token grants (an operator-only task: for an
    operator's token only, else 403): 202. A task declared unique whose key is held
    already starts nothing: 200 with the id of the task queued or running for it."""
    project_id = validate_project_id(json.project_id)
    authorize_project(project_id)
    principal = current_principal()
    sent = start(json.task, json.args, json.kwargs, project_id=project_id,
                 user_id=principal.user_id, operator=principal.is_operator)
    if sent.duplicate_of is not None and sent.claim is not None:
        return jsonify(task_id=sent.task_id, duplicate_of=sent.duplicate_of,
                       unique=sent.claim.describe()), 200
    return jsonify(task_id=sent.task_id), 202


@bp.get("/api/tasks/<task_id>")
@require_auth
@validate(tags=("tasks",), resp=responses(HTTP_200=TaskStatus, HTTP_404=Error))
def get_task(task_id: str) -> Answer:
    """A task's state and outcome; 404 for ids K1 never issued and other projects' tasks
    (a 403 would tell that the id exists)."""
    submission = lookup(task_id)
    if submission is None:
        return _from_history(task_id)
    if not current_principal().can_see(submission.project_id):
        raise APIError(404, "task not found", detail=task_id)
    return jsonify(history_views.with_history(status(submission), _history(task_id)))


# -- task history (k1.history) ---------------------------------------------------------

class TaskQuery(Query):
    """Which tasks: every field optional; dates are ISO-8601 (UTC unless an offset)."""

    # Unknown parameters reach TaskFilter.parse, which names them with the known ones.
    model_config = ConfigDict(extra="allow")

    project_id: str | None = None
    task: str | None = None
    state: str | None = Field(None, json_schema_extra={"enum": list(STATES)})
    worker: str | None = None
    since: str | None = None
    until: str | None = None
    q: str | None = Field(None, max_length=MAX_QUERY,
                          description="a task id prefix, or text in arguments and errors")
    limit: int | None = Field(None, json_schema_extra={"minimum": 1, "maximum": MAX_LIMIT})
    cursor: str | None = Field(None, max_length=600)


class TaskPage(BaseModel):
    items: list[dict[str, Any]]
    next_cursor: str | None


@bp.errorhandler(FilterError)
def _bad_filter(exc: FilterError) -> Answer:
    return error_response(APIError(400, str(exc)))


@bp.errorhandler(SubmissionError)
def _bad_submission(exc: SubmissionError) -> Answer:
    return error_response(APIError(400, str(exc)))


@bp.errorhandler(NotAllowed)  # a SubmissionError: Flask takes the most specific handler
def _not_allowed(exc: NotAllowed) -> Answer:
    return error_response(APIError(403, str(exc)))


@bp.get("/api/tasks")
@require_auth
@validate(query=TaskQuery, tags=("tasks",), resp=responses(HTTP_200=TaskPage, HTTP_403=Error))
def list_tasks(query: TaskQuery) -> Answer:
    """Task history, newest first: filters, ``q`` (a task id prefix or text in arguments
    and errors), keyset pages. A project token sees its projects' tasks."""
    filters = TaskFilter.parse(query.model_dump(exclude_none=True, exclude={"limit", "cursor"}))
    if filters.project_id:
        authorize_project(filters.project_id)
    principal = current_principal()
    filters = filters.scoped(None if principal.is_operator else principal.projects)
    page, next_cursor = blocking(history_store.search, filters, limit=parse_limit(query.limit),
                                 cursor=query.cursor)
    return jsonify(items=[history_store.as_dict(row) for row in page], next_cursor=next_cursor)


def _history(task_id: str) -> tuple[TaskRun, list[TaskAttempt]] | None:
    """History's row and attempts, or None when the database is away: the result
    backend's answer stands on its own, as it did before history.
    """
    try:
        return blocking(history_store.get, task_id)
    except SQLAlchemyError as exc:  # logged here, on the hub, not in the pool's thread
        log.warning("task %s answered without history: %s", task_id, type(exc).__name__)
        return None


def _from_history(task_id: str) -> Answer:
    """A task the result backend no longer knows (or never did: beat's), from history;
    another project's task is a 404 like one that does not exist.
    """
    found = blocking(history_store.get, task_id)
    if found is None or not current_principal().can_see(found[0].project_id):
        raise APIError(404, "task not found", detail=task_id)
    return jsonify(history_views.from_history(*found))
