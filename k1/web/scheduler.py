"""``/api/scheduler/jobs``: schedules (RedBeat entries) read, created, changed, run now.

Reads list what the token may see; writes need a token that reaches the schedule's
project, and an operator token for built-in and project-less schedules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import BaseModel, Field

from k1.scheduling import (
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
from k1.web.contract import Accepted, Body, Error, Name, ProjectId, responses, validate
from k1.web.errors import APIError

bp = Blueprint("scheduler", __name__)


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


@bp.get("/api/scheduler/jobs")
@require_auth
@validate(tags=("scheduler",), resp=responses(HTTP_200=Jobs))
def list_jobs():  # type: ignore[no-untyped-def]
    principal = current_principal()
    jobs = [s.to_json() for s in ScheduleStore().list() if principal.can_see(s.spec.project_id)]
    return jsonify(jobs=jobs)


@bp.post("/api/scheduler/jobs")
@require_auth
@validate(json=NewSchedule, tags=("scheduler",),
          resp=responses(HTTP_201=Job, HTTP_403=Error, HTTP_409=Error))
def create_job(json: NewSchedule):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    spec = _checked(lambda: store.validate(_given(json)))
    _authorize_write(spec)
    try:
        schedule = store.create(spec)
    except ScheduleExists as exc:
        raise APIError(409, str(exc), detail={"field": "name", "value": spec.name}) from None
    assert schedule is not None
    return jsonify(schedule.to_json()), 201


@bp.get("/api/scheduler/jobs/<name>")
@require_auth
@validate(tags=("scheduler",), resp=responses(HTTP_200=Job, HTTP_403=Error, HTTP_404=Error))
def get_job(name: str):  # type: ignore[no-untyped-def]
    schedule = _find(ScheduleStore(), name)
    authorize_project(schedule.spec.project_id)
    return jsonify({**schedule.to_json(), "recent_fires": recent_fires(name)})


@bp.patch("/api/scheduler/jobs/<name>")
@require_auth
@validate(json=ScheduleChanges, tags=("scheduler",),
          resp=responses(HTTP_200=Job, HTTP_403=Error, HTTP_404=Error, HTTP_409=Error))
def update_job(name: str, json: ScheduleChanges):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    changes = _given(json)
    current = _find(store, name)
    _authorize_write(current.spec)
    spec = _checked(lambda: current.spec.patched(changes, store.known_tasks()))
    _authorize_write(spec)
    try:
        return jsonify(store.replace(current, spec).to_json())
    except ScheduleConflict as exc:
        raise APIError(409, str(exc), detail={"name": name}) from None


@bp.delete("/api/scheduler/jobs/<name>")
@require_auth
@validate(tags=("scheduler",), resp=responses(HTTP_204=None, HTTP_403=Error, HTTP_404=Error))
def delete_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    _authorize_write(_find(store, name).spec)
    with contextlib.suppress(ScheduleNotFound):  # deleted meanwhile: as the client asked
        store.delete(name)
    return "", 204


@bp.post("/api/scheduler/jobs/<name>/run")
@require_auth
@validate(tags=("scheduler",), resp=responses(HTTP_202=Accepted, HTTP_403=Error, HTTP_404=Error))
def run_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    schedule = _find(store, name)
    _authorize_write(schedule.spec)
    try:
        task_id = store.run_now(schedule, user_id=current_principal().user_id)
    except SubmissionError as exc:  # the task's signature changed since it was scheduled
        raise APIError(400, str(exc), detail={"name": name}) from None
    return jsonify(task_id=task_id), 202


def _checked(build: Callable[[], ScheduleSpec]) -> ScheduleSpec:
    try:
        return build()
    except InvalidSchedule as exc:
        raise APIError(400, str(exc), detail={"field": exc.field, "problem": exc.problem}
                       ) from None


def _find(store: ScheduleStore, name: str) -> Schedule:
    try:
        return store.get(name)
    except ScheduleNotFound as exc:
        raise APIError(404, "schedule not found", detail=str(exc)) from None


def _authorize_write(spec: ScheduleSpec) -> None:
    if spec.builtin or spec.project_id is None:
        require_operator()
    else:
        authorize_project(spec.project_id)
