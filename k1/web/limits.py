"""Flow control over HTTP: limits with their live use, queues, and the workers.

``GET /api/limits`` · ``PUT /api/limits/<name>`` · ``DELETE /api/limits/<name>`` ·
``GET /api/queues`` · ``POST /api/queues/<name>/pause`` · ``POST /api/queues/<name>/resume`` ·
``GET /api/workers``. Reading needs a token, changing an operator token (limits and queues
are fleet-wide). Queues and workers are the fleet's shape, shown to every signed-in user;
the tasks a worker runs are tenants' data: a project token sees its projects' only
(:func:`k1.flow.fleet.workers`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel

from k1.flow import admin, fleet, limits, queues
from k1.web.auth import current_principal, require_auth, require_operator
from k1.web.contract import Body, Error, responses, validate
from k1.web.errors import Answer, APIError, error_response

bp = Blueprint("limits", __name__)


@bp.errorhandler(limits.InvalidLimit)
def _bad_limit(exc: limits.InvalidLimit) -> Answer:
    return error_response(APIError(400, str(exc), detail={"field": exc.field}))


@bp.errorhandler(queues.InvalidQueue)
def _bad_queue(exc: queues.InvalidQueue) -> Answer:
    return error_response(APIError(400, str(exc), detail={"field": "queue"}))


class LimitBody(Body):
    """A run-time limit. ``per``: "global", "project" or an argument name; ``rate``:
    "N/s", "N/m" or "N/h"; at least one of ``concurrency`` and ``rate``."""

    tasks: list[str]
    per: str = limits.PER_GLOBAL
    concurrency: int | None = None
    rate: str | None = None
    lease: float = limits.DEFAULT_LEASE


class LimitOut(BaseModel):
    name: str
    tasks: list[str]
    per: str
    concurrency: int | None
    rate: str | None
    lease: float
    source: str
    usage: list[dict[str, Any]]


class Limits(BaseModel):
    limits: list[LimitOut]


class Deleted(BaseModel):
    deleted: str
    now: LimitOut | None


class QueueState(BaseModel):
    queue: str
    paused: bool
    workers: list[str]


class QueueOut(BaseModel):
    queue: str
    depth: int  # messages waiting, every priority list of the queue
    paused: bool
    oldest_age_s: float | None  # seconds the oldest waiting message has waited; None: none
    enqueue_rate: float  # messages published per second over the last minute
    dequeue_rate: float  # messages fetched by workers per second over the last minute


class Queues(BaseModel):
    paused: list[str]
    queues: list[QueueOut]
    rate_window_s: int


class ActiveTask(BaseModel):
    id: str
    name: str | None
    project_id: str | None
    queue: str | None
    started_at: float | None
    runtime_s: float | None
    worker_pid: int | None


class WorkerOut(BaseModel):
    hostname: str
    pid: int | None
    last_heartbeat: float
    heartbeat_age_s: float
    active_count: int | None  # tasks it runs now, every project's (its heartbeat's count)
    processed: int | None  # tasks it has run since it started
    pool: str | None  # None until the next inspect has reached a worker new online
    concurrency: int | None
    queues: list[str] | None
    active: list[ActiveTask]  # the caller's projects' only, unless an operator


class Workers(BaseModel):
    workers: list[WorkerOut]
    inspected_at: float | None


@bp.get("/api/limits")
@require_auth
@validate(tags=("flow",), resp=responses(HTTP_200=Limits))
def list_limits() -> Answer:
    principal = current_principal()
    return jsonify(limits=admin.overview(None if principal.is_operator else principal.projects))


@bp.put("/api/limits/<name>")
@require_auth
@validate(json=LimitBody, tags=("flow",), resp=responses(HTTP_200=LimitOut, HTTP_403=Error))
def put_limit(name: str, json: LimitBody) -> Answer:
    require_operator()
    return jsonify(admin.put(name, json.model_dump()))


@bp.delete("/api/limits/<name>")
@require_auth
@validate(tags=("flow",), resp=responses(HTTP_200=Deleted, HTTP_403=Error, HTTP_404=Error))
def delete_limit(name: str) -> Answer:
    require_operator()
    deleted = admin.delete(name)
    if deleted is None:
        raise APIError(404, "no run-time limit of that name", detail=name)
    return jsonify(deleted)


@bp.get("/api/queues")
@require_auth
@validate(tags=("flow",), resp=responses(HTTP_200=Queues))
def list_queues() -> Answer:
    paused = queues.paused_queues()
    return jsonify(paused=paused, queues=fleet.queues(set(paused)),
                   rate_window_s=fleet.RATE_WINDOW)


@bp.get("/api/workers")
@require_auth
@validate(tags=("flow",), resp=responses(HTTP_200=Workers))
def list_workers() -> Answer:
    principal = current_principal()
    return jsonify(fleet.workers(None if principal.is_operator else set(principal.projects)))


@bp.post("/api/queues/<name>/pause")
@require_auth
@validate(tags=("flow",), resp=responses(HTTP_200=QueueState, HTTP_403=Error))
def pause_queue(name: str) -> Answer:
    require_operator()
    return jsonify(queues.pause(name))


@bp.post("/api/queues/<name>/resume")
@require_auth
@validate(tags=("flow",), resp=responses(HTTP_200=QueueState, HTTP_403=Error))
def resume_queue(name: str) -> Answer:
    require_operator()
    return jsonify(queues.resume(name))
