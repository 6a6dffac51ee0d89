"""Circuit breakers over HTTP: ``GET /api/breakers``, ``POST /api/breakers/<name>/reset``."""

from __future__ import annotations

from flask import Blueprint, jsonify

from k1.recovery import breakers
from k1.web.auth import require_auth, require_operator
from k1.web.errors import APIError

bp = Blueprint("breakers", __name__)


@bp.get("/api/breakers")
@require_auth
def list_breakers():  # type: ignore[no-untyped-def]
    return jsonify(breakers=[status.as_dict() for status in breakers.all_statuses()])


@bp.post("/api/breakers/<name>/reset")
@require_auth
def reset(name: str):  # type: ignore[no-untyped-def]
    require_operator()
    status = breakers.reset(name)
    if status is None:
        raise APIError(404, "circuit breaker not found", detail=name)
    return jsonify(status.as_dict())
