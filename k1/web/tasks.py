"""``POST /api/tasks`` starts a task; ``GET /api/tasks/<id>`` reads its state (with its
attempts and links from history); ``GET /api/tasks`` searches the history."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from k1.history import store as history_store
from k1.history import views as history_views
from k1.history.filters import TaskFilter
from k1.recovery.dlq.filters import FilterError, parse_limit
from k1.tasks.submissions import SubmissionError, lookup, status, submit
from k1.web.auth import authorize_project, current_principal, require_auth
from k1.web.errors import APIError, error_response, json_object
from k1.web.offload import blocking

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
    if not isinstance(project_id, str | int) or isinstance(project_id, bool) or project_id == "":
        raise APIError(400, "project_id: required, a string")
    project_id = str(project_id)
    authorize_project(project_id)
    try:
        task_id = submit(
            task, args, kwargs, project_id=project_id, user_id=current_principal().user_id
        )
    except SubmissionError as exc:
        raise APIError(400, str(exc)) from None
    return jsonify(task_id=task_id), 202


@bp.get("/api/tasks/<task_id>")
@require_auth
def get_task(task_id: str):  # type: ignore[no-untyped-def]
    submission = lookup(task_id)
    if submission is None:
        return _from_history(task_id)
    authorize_project(submission.project_id)
    return jsonify(history_views.with_history(status(submission),
                                              blocking(history_views.history_of, task_id)))


# -- task history (k1.history) ---------------------------------------------------------

@bp.errorhandler(FilterError)
def _bad_filter(exc: FilterError):  # type: ignore[no-untyped-def]
    return error_response(APIError(400, str(exc)))


@bp.get("/api/tasks")
@require_auth
def list_tasks():  # type: ignore[no-untyped-def]
    """Task history, newest first: filters, ``q`` (id prefix or text), keyset pages."""
    filters = TaskFilter.parse(request.args, extra=("limit", "cursor"))
    if filters.project_id:
        authorize_project(filters.project_id)
    principal = current_principal()
    filters = filters.scoped(None if principal.is_operator else principal.projects)
    page, next_cursor = blocking(history_store.search, filters,
                                 limit=parse_limit(request.args.get("limit")),
                                 cursor=request.args.get("cursor"))
    return jsonify(items=[history_store.as_dict(row) for row in page], next_cursor=next_cursor)


def _from_history(task_id: str):  # type: ignore[no-untyped-def]
    """A task the result backend no longer knows (or never did: beat's), from history;
    another project's task is a 404 like one that does not exist.
    """
    found = blocking(history_store.get, task_id)
    if found is None or not current_principal().can_see(found[0].project_id):
        raise APIError(404, "task not found", detail=task_id)
    return jsonify(history_views.from_history(*found))
