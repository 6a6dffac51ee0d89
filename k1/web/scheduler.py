"""``/api/scheduler/jobs``: schedules (RedBeat entries) read, created, changed, run now.

Reads list what the token may see; writes need a token that reaches the schedule's
project, and an operator token for built-in and project-less schedules. A schedule the
token may not see answers 404 exactly as a missing one, so a tenant cannot learn that
another's schedule exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from flask import Blueprint, jsonify

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
from k1.web.errors import APIError, json_object

bp = Blueprint("scheduler", __name__)


@bp.get("/api/scheduler/jobs")
@require_auth
def list_jobs():  # type: ignore[no-untyped-def]
    principal = current_principal()
    jobs = [s.to_json() for s in ScheduleStore().list() if principal.can_see(s.spec.project_id)]
    return jsonify(jobs=jobs)


@bp.post("/api/scheduler/jobs")
@require_auth
def create_job():  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    spec = _checked(lambda: store.validate(json_object()))
    _authorize_write(spec)
    try:
        schedule = store.create(spec)
    except ScheduleExists as exc:
        raise APIError(409, str(exc), detail={"field": "name", "value": spec.name}) from None
    assert schedule is not None
    return jsonify(schedule.to_json()), 201


@bp.get("/api/scheduler/jobs/<name>")
@require_auth
def get_job(name: str):  # type: ignore[no-untyped-def]
    schedule = _find(ScheduleStore(), name)
    return jsonify({**schedule.to_json(), "recent_fires": recent_fires(name)})


@bp.patch("/api/scheduler/jobs/<name>")
@require_auth
def update_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    changes = json_object()
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
def delete_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    _authorize_write(_find(store, name).spec)
    with contextlib.suppress(ScheduleNotFound):  # deleted meanwhile: as the client asked
        store.delete(name)
    return "", 204


@bp.post("/api/scheduler/jobs/<name>/run")
@require_auth
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
    """The schedule ``name`` if the token may see it; 404 alike for missing and hidden."""
    try:
        schedule = store.get(name)
    except ScheduleNotFound:
        schedule = None
    if schedule is None or not current_principal().can_see(schedule.spec.project_id):
        raise APIError(404, "schedule not found", detail=f"no schedule named {name!r}")
    return schedule


def _authorize_write(spec: ScheduleSpec) -> None:
    if spec.builtin or spec.project_id is None:
        require_operator()
    else:
        authorize_project(spec.project_id)
