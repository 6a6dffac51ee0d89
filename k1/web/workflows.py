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

from flask import Blueprint, jsonify
from pydantic import BaseModel, Field

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
from k1.tasks.submissions import send
from k1.web.auth import authorize_project, current_principal, require_auth, require_operator
from k1.web.contract import MAX_INT32, Body, Error, ProjectId, Query, responses, validate
from k1.web.errors import Answer, APIError, error_response

bp = Blueprint("workflows", __name__)


class Recent(Query):
    limit: int = Field(executions.DEFAULT_RECENT, ge=1, le=executions.MAX_RECENT,
                       description="recent executions to list")


class Start(Body):
    input: dict[str, Any] = Field(default_factory=dict)
    # Conductor stores versions as 32-bit integers: a larger one is the caller's error,
    # never a Conductor 500 that counts against its breaker.
    version: int | None = Field(None, ge=1, le=MAX_INT32)
    project_id: ProjectId | None = None  # required but for operator-only workflows


class Workflows(BaseModel):
    definitions: list[dict[str, Any]]
    executions: list[dict[str, Any]]


class Started(BaseModel):
    workflow_id: str


class Deferred(BaseModel):
    task_id: str
    deferred: bool


# The client's exceptions, mapped once for every route (most specific class wins).
@bp.errorhandler(ConductorNotConfigured)
def _not_configured(exc: ConductorNotConfigured) -> Answer:
    return error_response(APIError(503, "conductor not configured", detail=str(exc)))


@bp.errorhandler(ConductorNotFound)
def _not_found(exc: ConductorNotFound) -> Answer:
    return error_response(APIError(404, "workflow not found", detail=str(exc)))


@bp.errorhandler(ConductorInvalidInput)
def _invalid(exc: ConductorInvalidInput) -> Answer:
    return error_response(APIError(400, str(exc), detail={"field": exc.field}))


@bp.errorhandler(ConductorRejected)
def _rejected(exc: ConductorRejected) -> Answer:
    return error_response(APIError(400, "conductor refused the request", detail=str(exc)))


@bp.errorhandler(ConductorUnreachable)
def _unreachable(exc: ConductorUnreachable) -> Answer:
    return error_response(APIError(503, "conductor unavailable", detail=str(exc)))


@bp.errorhandler(ValidationFailed)
def _bad_files(exc: ValidationFailed) -> Answer:
    # Which workflows are operator only cannot be told: refuse rather than guess.
    return error_response(APIError(503, "workflow files invalid", detail=str(exc)))


@bp.get("/api/workflows")
@require_auth
@validate(query=Recent, tags=("workflows",), resp=responses(HTTP_200=Workflows))
def list_workflows(query: Recent) -> Answer:
    limit = query.limit
    principal = current_principal()
    projects = None if principal.is_operator else principal.projects
    client = _client_or_none()
    return jsonify(definitions=_definitions(client),
                   executions=executions.recent(limit, projects, client=client))


@bp.post("/api/workflows/<name>/start")
@require_auth
@validate(json=Start, tags=("workflows",),
          resp=responses(HTTP_201=Started, HTTP_202=Deferred, HTTP_403=Error, HTTP_404=Error))
def start_workflow(name: str, json: Start) -> Answer:
    """Start ``name`` for ``project_id``; an operator-only workflow (its file says so) is
    platform-wide: operator tokens only, and started for no project.
    """
    workflow_input, version, project_id = json.input, json.version, json.project_id
    if name in operator_only_workflows(get_settings().workflows_dir):
        require_operator()
        if project_id is not None:
            raise APIError(400, f"project_id: {name} is platform-wide (operator only); "
                                "leave project_id out",
                           detail={"field": "project_id", "problem": "not allowed"})
    elif project_id is None:
        raise APIError(400, "project_id: required, a string",
                       detail={"field": "project_id", "problem": "required"})
    else:
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
           project_id: str | None, user_id: str | None):
    # The route checked the caller (project, or operator for a platform-wide workflow),
    # so K1 vouches for the deferred start.
    task_id = send("k1.conductor.start_workflow",
                   kwargs={"name": name, "version": version, "input": workflow_input,
                           "project_id": project_id},
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
