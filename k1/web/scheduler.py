"""``/api/scheduler/jobs``: schedules (RedBeat entries) read, created, changed, run now.

Reads list what the token may see; writes need a token that reaches the schedule's
project, and an operator token for built-in and project-less schedules.

Names are scoped per project: two projects may each have a ``nightly``, and neither
learns of the other's. A schedule the token may not see answers 404 exactly as a missing
one; a create answers 409 only for a name taken in the same project. A name used in
several projects the token reaches is addressed with ``?project_id=`` (else 409).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, Field

from k1.scheduling import (
    AmbiguousSchedule,
    InvalidSchedule,
    Schedule,
    ScheduleConflict,
    ScheduleExists,
    ScheduleNotFound,
    ScheduleSpec,
    ScheduleStore,
)
from k1.scheduling.history import recent_fires
from k1.tasks.submissions import SubmissionError
from k1.web.auth import authorize_project, current_principal, require_auth, require_operator
from k1.web.contract import (
    Accepted,
    Body,
    Error,
    Name,
    ProjectId,
    Query,
    responses,
    validate,
)
from k1.web.errors import Answer, APIError, error_response

bp = Blueprint("scheduler", __name__)


@bp.errorhandler(InvalidSchedule)
def _invalid(exc: InvalidSchedule) -> Answer:
    return error_response(APIError(400, str(exc), detail={"field": exc.field,
                                                          "problem": exc.problem}))


@bp.errorhandler(ScheduleNotFound)
def _not_found(exc: ScheduleNotFound) -> Answer:
    return error_response(APIError(404, "schedule not found", detail=str(exc)))


@bp.errorhandler(ScheduleExists)
def _exists(exc: ScheduleExists) -> Answer:
    return error_response(APIError(409, str(exc), detail={"field": "name", "value": exc.name}))


@bp.errorhandler(AmbiguousSchedule)
def _ambiguous(exc: AmbiguousSchedule) -> Answer:
    return error_response(APIError(409, str(exc), detail={"field": "project_id",
                                                          "projects": exc.projects}))


@bp.errorhandler(ScheduleConflict)
def _conflict(exc: ScheduleConflict) -> Answer:
    return error_response(APIError(409, str(exc), detail=dict(request.view_args or {})))


@bp.errorhandler(SubmissionError)  # run now: the task's signature changed since scheduled
def _refused(exc: SubmissionError) -> Answer:
    return error_response(APIError(400, str(exc), detail=dict(request.view_args or {})))


class ScheduleChanges(Body):
    """Fields of a schedule; the store checks what they mean (a cron parses, a task
    exists, the interval's bounds) and names the field it refuses."""

    name: Name | None = None
    task: Name | None = None
    cron: str | None = Field(None, max_length=255, description="5-field cron expression")
    every: float | None = Field(None, gt=0, allow_inf_nan=False, description="seconds")
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    enabled: bool | None = None
    timezone: Name | None = Field(None, description="IANA name; default UTC")
    project_id: ProjectId | None = None
    catch_up: Literal["once", "skip"] | None = None


class NewSchedule(ScheduleChanges):
    name: Name
    task: Name


class Job(BaseModel):
    name: str
    task: str


class Jobs(BaseModel):
    jobs: list[Job]


def _given(body: Body) -> dict[str, Any]:
    """The fields the client sent (an explicit null included: it may clear one)."""
    return body.model_dump(exclude_unset=True)


class Address(Query):
    """Which project's schedule of that name, where several the token reaches use it."""

    project_id: ProjectId | None = None


@bp.get("/api/scheduler/jobs")
@require_auth
@validate(tags=("scheduler",), resp=responses(HTTP_200=Jobs))
def list_jobs() -> Answer:
    principal = current_principal()
    jobs = [s.to_json() for s in ScheduleStore().list() if principal.can_see(s.spec.project_id)]
    return jsonify(jobs=jobs)


@bp.post("/api/scheduler/jobs")
@require_auth
@validate(json=NewSchedule, tags=("scheduler",),
          resp=responses(HTTP_201=Job, HTTP_403=Error, HTTP_409=Error))
def create_job(json: NewSchedule) -> Answer:
    store = ScheduleStore()
    spec = store.validate(_given(json))
    _authorize_write(spec)
    schedule = store.create(spec)
    assert schedule is not None
    return jsonify(schedule.to_json()), 201


@bp.get("/api/scheduler/jobs/<name>")
@require_auth
@validate(query=Address, tags=("scheduler",),
          resp=responses(HTTP_200=Job, HTTP_404=Error, HTTP_409=Error))
def get_job(name: str, query: Address) -> Answer:
    schedule = _find(ScheduleStore(), name, query)
    return jsonify({**schedule.to_json(), "recent_fires": recent_fires(schedule.id)})


@bp.patch("/api/scheduler/jobs/<name>")
@require_auth
@validate(json=ScheduleChanges, query=Address, tags=("scheduler",),
          resp=responses(HTTP_200=Job, HTTP_403=Error, HTTP_404=Error, HTTP_409=Error))
def update_job(name: str, json: ScheduleChanges, query: Address) -> Answer:
    store = ScheduleStore()
    changes = _given(json)
    current = _find(store, name, query)
    _authorize_write(current.spec)
    spec = current.spec.patched(changes, store.known_tasks())
    _authorize_write(spec)
    return jsonify(store.replace(current, spec).to_json())


@bp.delete("/api/scheduler/jobs/<name>")
@require_auth
@validate(query=Address, tags=("scheduler",),
          resp=responses(HTTP_204=None, HTTP_403=Error, HTTP_404=Error, HTTP_409=Error))
def delete_job(name: str, query: Address) -> Answer:
    store = ScheduleStore()
    schedule = _find(store, name, query)
    _authorize_write(schedule.spec)
    with contextlib.suppress(ScheduleNotFound):  # deleted meanwhile: as the client asked
        store.delete(name, schedule.spec.project_id)
    return "", 204


@bp.post("/api/scheduler/jobs/<name>/run")
@require_auth
@validate(query=Address, tags=("scheduler",),
          resp=responses(HTTP_202=Accepted, HTTP_403=Error, HTTP_404=Error, HTTP_409=Error))
def run_job(name: str, query: Address) -> Answer:
    store = ScheduleStore()
    schedule = _find(store, name, query)
    _authorize_write(schedule.spec)
    task_id = store.run_now(schedule, user_id=current_principal().user_id)
    return jsonify(task_id=task_id), 202


def _find(store: ScheduleStore, name: str, query: Address) -> Schedule:
    """Schedule ``name`` among those the token may see (of ``?project_id=`` if given);
    ScheduleNotFound alike for missing and hidden ones."""
    principal = current_principal()
    project_id = query.project_id
    if project_id is not None:
        if not principal.can_see(project_id):
            raise ScheduleNotFound(f"no schedule named {name!r}")
        return store.find(name, [project_id])
    return store.find(name, None if principal.is_operator else sorted(principal.projects))


def _authorize_write(spec: ScheduleSpec) -> None:
    if spec.builtin or spec.project_id is None:
        require_operator()
    else:
        authorize_project(spec.project_id)
