"""``GET /api/workflows`` lists definitions and recent executions;
``POST /api/workflows/<name>/start`` ``{input, version?, project_id}`` starts one.

A start is made at once when Conductor answers (201 ``{workflow_id}``). When it cannot be
reached (down, or its breaker open) the start is deferred to the Celery task
``k1.conductor.start_workflow``, which retries until it can: 202 ``{task_id, deferred}``;
``GET /api/tasks/<task_id>`` then shows ``{"workflow_id": ...}`` as its result.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, Field

from k1.conductor import executions
from k1.conductor.client import (
    ConductorClient,
    ConductorError,
    ConductorNotConfigured,
    ConductorNotFound,
    ConductorRejected,
    ConductorUnreachable,
)
from k1.conductor.registry import ValidationFailed, load_directory
from k1.settings import get_settings
from k1.tasks.submissions import send
from k1.web.auth import authorize_project, current_principal, require_auth
from k1.web.contract import MAX_INT32, Body, Error, ProjectId, Query, responses, validate
from k1.web.errors import APIError

bp = Blueprint("workflows", __name__)


class Recent(Query):
    limit: int = Field(executions.DEFAULT_RECENT, ge=1, le=executions.MAX_RECENT,
                       description="recent executions to list")


class Start(Body):
    input: dict[str, Any] = Field(default_factory=dict)
    # Conductor stores versions as 32-bit integers: a larger one is the caller's error,
    # never a Conductor 500 that counts against its breaker.
    version: int | None = Field(None, ge=1, le=MAX_INT32)
    project_id: ProjectId


class Workflows(BaseModel):
    definitions: list[dict[str, Any]]
    executions: list[dict[str, Any]]


class Started(BaseModel):
    workflow_id: str


class Deferred(BaseModel):
    task_id: str
    deferred: bool


@bp.get("/api/workflows")
@require_auth
@validate(query=Recent, tags=("workflows",), resp=responses(HTTP_200=Workflows))
def list_workflows(query: Recent):  # type: ignore[no-untyped-def]
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
def start_workflow(name: str, json: Start):  # type: ignore[no-untyped-def]
    workflow_input, version, project_id = json.input, json.version, json.project_id
    authorize_project(project_id)
    user_id = current_principal().user_id
    try:
        workflow_id = executions.start(name, workflow_input, version=version,
                                       project_id=project_id, user_id=user_id,
                                       client=ConductorClient())
    except ConductorNotConfigured as exc:
        raise APIError(503, "conductor not configured", detail=str(exc)) from None
    except ConductorNotFound as exc:
        raise APIError(404, "workflow not found", detail=str(exc)) from None
    except ConductorRejected as exc:
        raise APIError(400, "conductor refused the start", detail=str(exc)) from None
    except ConductorUnreachable:
        return _defer(name, version, workflow_input, project_id, user_id)
    return jsonify(workflow_id=workflow_id), 201


def _defer(name: str, version: int | None, workflow_input: dict[str, Any], project_id: str,
           user_id: str | None):  # type: ignore[no-untyped-def]
    # An internal task (not public): the route checked the caller, so K1 vouches for it.
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
            "registered_versions": None if registered is None
            else sorted(registered.get(name, [])),
        })
    return listed
