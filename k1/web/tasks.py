"""``POST /api/tasks`` starts a task; ``GET /api/tasks/<id>`` reads its state."""

from __future__ import annotations

from flask import Blueprint, jsonify

from k1.tasks.submissions import (
    NotAllowed,
    SubmissionError,
    lookup,
    status,
    submit,
    validate_project_id,
)
from k1.web.auth import authorize_project, current_principal, require_auth
from k1.web.errors import APIError, json_object

bp = Blueprint("tasks", __name__)


@bp.post("/api/tasks")
@require_auth
def create_task():  # type: ignore[no-untyped-def]
    body = json_object()
    unknown = set(body) - {"task", "args", "kwargs", "project_id"}
    if unknown:
        raise APIError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    task, args, kwargs = body.get("task"), body.get("args", []), body.get("kwargs", {})
    project_id = body.get("project_id")
    if not isinstance(task, str) or not task:
        raise APIError(400, "task: required, the name of a task")
    if not isinstance(args, list):
        raise APIError(400, "args: must be a JSON list")
    if not isinstance(kwargs, dict):
        raise APIError(400, "kwargs: must be a JSON object")
    try:
        project_id = validate_project_id(project_id)
    except SubmissionError as exc:
        raise APIError(400, str(exc)) from None
    authorize_project(project_id)
    principal = current_principal()
    try:
        task_id = submit(task, args, kwargs, project_id=project_id, user_id=principal.user_id,
                         operator=principal.is_operator)
    except NotAllowed as exc:
        raise APIError(403, str(exc)) from None
    except SubmissionError as exc:
        raise APIError(400, str(exc)) from None
    return jsonify(task_id=task_id), 202


@bp.get("/api/tasks/<task_id>")
@require_auth
def get_task(task_id: str):  # type: ignore[no-untyped-def]
    submission = lookup(task_id)
    if submission is None:
        raise APIError(404, "task not found", detail=task_id)
    authorize_project(submission.project_id)
    return jsonify(status(submission))
