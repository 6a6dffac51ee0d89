"""``GET /api/workflows`` lists definitions and recent executions;
``POST /api/workflows/<name>/start`` ``{input, version?, project_id}`` starts one.

A start is made at once when Conductor answers (201 ``{workflow_id}``). When it cannot be
reached (down, or its breaker open) the start is deferred to the Celery task
``k1.conductor.start_workflow``, which retries until it can: 202 ``{task_id, deferred}``;
``GET /api/tasks/<task_id>`` then shows ``{"workflow_id": ...}`` as its result. A start
that could not be valid (``version`` beyond Conductor's int32, an input that is not a
bounded JSON object...) is 400 naming the field, checked before anything is sent; it is
never deferred, and never counts against the shared ``conductor`` breaker.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from k1.conductor import executions
from k1.conductor.client import (
    ConductorClient,
    ConductorError,
    ConductorInvalidInput,
    ConductorNotConfigured,
    ConductorNotFound,
    ConductorRejected,
    ConductorUnreachable,
)
from k1.conductor.registry import ValidationFailed, load_directory, operator_only_workflows
from k1.settings import get_settings
from k1.tasks.submissions import submit
from k1.web.auth import authorize_project, current_principal, require_auth, require_operator
from k1.web.errors import APIError, error_response, json_object

bp = Blueprint("workflows", __name__)

START_FIELDS = {"input", "version", "project_id"}


# The client's exceptions, mapped once for every route (most specific class wins).
@bp.errorhandler(ConductorNotConfigured)
def _not_configured(exc: ConductorNotConfigured):  # type: ignore[no-untyped-def]
    return error_response(APIError(503, "conductor not configured", detail=str(exc)))


@bp.errorhandler(ConductorNotFound)
def _not_found(exc: ConductorNotFound):  # type: ignore[no-untyped-def]
    return error_response(APIError(404, "workflow not found", detail=str(exc)))


@bp.errorhandler(ConductorInvalidInput)
def _invalid(exc: ConductorInvalidInput):  # type: ignore[no-untyped-def]
    return error_response(APIError(400, str(exc), detail={"field": exc.field}))


@bp.errorhandler(ConductorRejected)
def _rejected(exc: ConductorRejected):  # type: ignore[no-untyped-def]
    return error_response(APIError(400, "conductor refused the request", detail=str(exc)))


@bp.errorhandler(ConductorUnreachable)
def _unreachable(exc: ConductorUnreachable):  # type: ignore[no-untyped-def]
    return error_response(APIError(503, "conductor unavailable", detail=str(exc)))


@bp.errorhandler(ValidationFailed)
def _bad_files(exc: ValidationFailed):  # type: ignore[no-untyped-def]
    # Which workflows are operator only cannot be told: refuse rather than guess.
    return error_response(APIError(503, "workflow files invalid", detail=str(exc)))


@bp.get("/api/workflows")
@require_auth
def list_workflows():  # type: ignore[no-untyped-def]
    try:
        limit = int(request.args.get("limit", executions.DEFAULT_RECENT))
    except ValueError:
        raise APIError(400, "limit must be an integer") from None
    principal = current_principal()
    projects = None if principal.is_operator else principal.projects
    client = _client_or_none()
    return jsonify(definitions=_definitions(client),
                   executions=executions.recent(limit, projects, client=client))


@bp.post("/api/workflows/<name>/start")
@require_auth
def start_workflow(name: str):  # type: ignore[no-untyped-def]
    """Start ``name`` for ``project_id``; an operator-only workflow (its file says so) is
    platform-wide: operator tokens only, and started for no project.
    """
    body = json_object()
    unknown = set(body) - START_FIELDS
    if unknown:
        raise APIError(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    workflow_input, version = body.get("input", {}), body.get("version")
    project_id = body.get("project_id")
    if name in operator_only_workflows(get_settings().workflows_dir):
        require_operator()
        if project_id is not None:
            raise APIError(400, f"project_id: {name} is platform-wide (operator only); "
                                "leave project_id out")
    else:
        if not isinstance(project_id, str) or not project_id:
            raise APIError(400, "project_id: required, a string")
        authorize_project(project_id)
    user_id = current_principal().user_id
    try:
        workflow_id = executions.start(name, workflow_input, version=version,
                                       project_id=project_id, user_id=user_id,
                                       client=ConductorClient())
    except ConductorUnreachable:  # a bad request (ConductorRejected) is never deferred
        return _defer(name, version, workflow_input, project_id, user_id)
    return jsonify(workflow_id=workflow_id), 201


def _defer(name: str, version: int | None, workflow_input: dict[str, Any],
           project_id: str | None, user_id: str | None):  # type: ignore[no-untyped-def]
    kwargs = {"name": name, "version": version, "input": workflow_input}
    if project_id is None:  # platform-wide: the operator check above vouches for it
        task_id = executions.send_task("k1.conductor.start_workflow", kwargs=kwargs,
                                       project_id=None, user_id=user_id)
    else:
        task_id = submit("k1.conductor.start_workflow", kwargs=kwargs,
                         project_id=project_id, user_id=user_id)
    return jsonify(task_id=task_id, deferred=True), 202


def _client_or_none() -> ConductorClient | None:
    try:
        return ConductorClient()
    except ConductorNotConfigured:
        return None


def _definitions(client: ConductorClient | None) -> list[dict[str, Any]]:
    """The workflow files, each with the versions the server has (None: unknown)."""
    try:
        files = load_directory(get_settings().workflows_dir)
    except ValidationFailed:
        files = []
    registered: dict[str, list[int]] | None = None
    if client is not None:
        try:
            registered = {}
            for definition in client.list_workflow_defs():
                registered.setdefault(definition["name"], []).append(int(definition["version"]))
        except ConductorError:
            registered = None
    names = sorted({f.name for f in files} | set(registered or {}))
    by_name = {f.name: f for f in files}
    listed = []
    for name in names:
        wf = by_name.get(name)
        listed.append({
            "name": name,
            "description": wf.workflow.get("description") if wf else None,
            "version": wf.version if wf else None,
            "tasks": wf.simple_task_names() if wf else None,
            "operator_only": wf.operator_only if wf else None,
            "registered_versions": None if registered is None
            else sorted(registered.get(name, [])),
        })
    return listed
