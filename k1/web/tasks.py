"""``POST /api/tasks`` starts a task; ``GET /api/tasks/<id>`` reads its state."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, Field

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
    UniqueClaim,
    responses,
    validate,
)
from k1.web.errors import Answer, APIError

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
    try:
        project_id = validate_project_id(json.project_id)
    except SubmissionError as exc:
        raise APIError(400, str(exc)) from None
    authorize_project(project_id)
    principal = current_principal()
    try:
        sent = start(json.task, json.args, json.kwargs, project_id=project_id,
                     user_id=principal.user_id, operator=principal.is_operator)
    except NotAllowed as exc:
        raise APIError(403, str(exc)) from None
    except SubmissionError as exc:
        raise APIError(400, str(exc)) from None
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
    if submission is None or not current_principal().can_see(submission.project_id):
        raise APIError(404, "task not found", detail=task_id)
    return jsonify(status(submission))
