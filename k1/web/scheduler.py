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

from flask import Blueprint, jsonify, request

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
from k1.web.errors import APIError, error_response, json_object

bp = Blueprint("scheduler", __name__)


@bp.errorhandler(InvalidSchedule)
def _invalid(exc: InvalidSchedule):  # type: ignore[no-untyped-def]
    return error_response(APIError(400, str(exc), detail={"field": exc.field,
                                                          "problem": exc.problem}))


@bp.errorhandler(ScheduleNotFound)
def _not_found(exc: ScheduleNotFound):  # type: ignore[no-untyped-def]
    return error_response(APIError(404, "schedule not found", detail=str(exc)))


@bp.errorhandler(ScheduleExists)
def _exists(exc: ScheduleExists):  # type: ignore[no-untyped-def]
    return error_response(APIError(409, str(exc), detail={"field": "name", "value": exc.name}))


@bp.errorhandler(AmbiguousSchedule)
def _ambiguous(exc: AmbiguousSchedule):  # type: ignore[no-untyped-def]
    return error_response(APIError(409, str(exc), detail={"field": "project_id",
                                                          "projects": exc.projects}))


@bp.errorhandler(ScheduleConflict)
def _conflict(exc: ScheduleConflict):  # type: ignore[no-untyped-def]
    return error_response(APIError(409, str(exc), detail=dict(request.view_args or {})))


@bp.errorhandler(SubmissionError)  # run now: the task's signature changed since scheduled
def _refused(exc: SubmissionError):  # type: ignore[no-untyped-def]
    return error_response(APIError(400, str(exc), detail=dict(request.view_args or {})))


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
    spec = store.validate(json_object())
    _authorize_write(spec)
    schedule = store.create(spec)
    assert schedule is not None
    return jsonify(schedule.to_json()), 201


@bp.get("/api/scheduler/jobs/<name>")
@require_auth
def get_job(name: str):  # type: ignore[no-untyped-def]
    schedule = _find(ScheduleStore(), name)
    return jsonify({**schedule.to_json(), "recent_fires": recent_fires(schedule.id)})


@bp.patch("/api/scheduler/jobs/<name>")
@require_auth
def update_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    changes = json_object()
    current = _find(store, name)
    _authorize_write(current.spec)
    spec = current.spec.patched(changes, store.known_tasks())
    _authorize_write(spec)
    return jsonify(store.replace(current, spec).to_json())


@bp.delete("/api/scheduler/jobs/<name>")
@require_auth
def delete_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    schedule = _find(store, name)
    _authorize_write(schedule.spec)
    with contextlib.suppress(ScheduleNotFound):  # deleted meanwhile: as the client asked
        store.delete(name, schedule.spec.project_id)
    return "", 204


@bp.post("/api/scheduler/jobs/<name>/run")
@require_auth
def run_job(name: str):  # type: ignore[no-untyped-def]
    store = ScheduleStore()
    schedule = _find(store, name)
    _authorize_write(schedule.spec)
    task_id = store.run_now(schedule, user_id=current_principal().user_id)
    return jsonify(task_id=task_id), 202


def _find(store: ScheduleStore, name: str) -> Schedule:
    """Schedule ``name`` among those the token may see (of ``?project_id=`` if given);
    ScheduleNotFound alike for missing and hidden ones."""
    principal = current_principal()
    project_id = request.args.get("project_id")
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
