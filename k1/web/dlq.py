"""The dead-letter queue over HTTP: stats, list, show, replay (one or by filter), discard,
and the quarantine (letters the database refused even repaired).

A token sees the letters of its projects; an operator token (project ``*``) sees all.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from k1.recovery.dlq.filters import FIELDS, FilterError, LetterFilter, parse_limit
from k1.recovery.dlq.store import (
    DeadLetterStore,
    LetterNotFound,
    ReplayRefused,
    letter_as_dict,
)
from k1.web.auth import authorize_project, current_principal, require_auth
from k1.web.errors import APIError, error_response, json_object
from k1.web.offload import blocking

bp = Blueprint("dlq", __name__)
store = DeadLetterStore()


@bp.errorhandler(LetterNotFound)
def _not_found(exc: LetterNotFound):  # type: ignore[no-untyped-def]
    return error_response(APIError(404, "dead letter not found",
                                   detail=exc.args[0] if exc.args else None))


@bp.errorhandler(ReplayRefused)
def _refused(exc: ReplayRefused):  # type: ignore[no-untyped-def]
    return error_response(APIError(409, str(exc)))


@bp.errorhandler(FilterError)
def _bad_filter(exc: FilterError):  # type: ignore[no-untyped-def]
    return error_response(APIError(400, str(exc)))


def _scope() -> frozenset[str] | None:
    principal = current_principal()
    return None if principal.is_operator else principal.projects


def _filters(params: Any, extra: tuple[str, ...] = ()) -> LetterFilter:
    filters = LetterFilter.parse(params, extra=extra)
    if filters.project_id:
        authorize_project(filters.project_id)
    return filters.scoped(_scope())


@bp.get("/api/dlq/stats")
@require_auth
def stats():  # type: ignore[no-untyped-def]
    return jsonify(blocking(store.stats, _scope()))


@bp.get("/api/dlq/quarantine")
@require_auth
def quarantined():  # type: ignore[no-untyped-def]
    items = blocking(store.quarantined, _scope(), limit=parse_limit(request.args.get("limit")))
    return jsonify(items=items)


@bp.get("/api/dlq")
@require_auth
def list_letters():  # type: ignore[no-untyped-def]
    filters = _filters(request.args, extra=("limit", "cursor"))
    page, next_cursor = blocking(store.query, filters, limit=parse_limit(request.args.get("limit")),
                                 cursor=request.args.get("cursor"))
    return jsonify(items=[letter_as_dict(letter, full=False) for letter in page],
                   next_cursor=next_cursor)


@bp.get("/api/dlq/<int:letter_id>")
@require_auth
def show(letter_id: int):  # type: ignore[no-untyped-def]
    return jsonify(letter_as_dict(blocking(store.get, letter_id, _scope())))


@bp.post("/api/dlq/<int:letter_id>/replay")
@require_auth
def replay(letter_id: int):  # type: ignore[no-untyped-def]
    force = _force(json_object() if request.get_data(cache=True) else {})
    letter = blocking(store.replay, letter_id, force=force, scope=_scope())
    return jsonify(id=letter.id, status=letter.status, replay_task_id=letter.replay_task_id,
                   replay_count=letter.replay_count)


@bp.post("/api/dlq/replay")
@require_auth
def replay_matching():  # type: ignore[no-untyped-def]
    body = json_object()
    force = _force(body)
    criteria = {key: value for key, value in body.items() if key not in ("force", "all")}
    if not criteria and body.get("all") is not True:
        raise APIError(400, "give at least one filter, or \"all\": true to replay every "
                            "dead letter", detail={"filters": list(FIELDS)})
    filters = _filters(criteria)
    task_ids = blocking(store.replay_matching, filters, force=force)
    return jsonify(replayed=len(task_ids), task_ids=task_ids)


@bp.delete("/api/dlq/<int:letter_id>")
@require_auth
def discard(letter_id: int):  # type: ignore[no-untyped-def]
    letter = blocking(store.discard, letter_id, scope=_scope())
    return jsonify(id=letter.id, status=letter.status)


def _force(body: dict[str, Any]) -> bool:
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise APIError(400, "force: must be true or false")
    return force
