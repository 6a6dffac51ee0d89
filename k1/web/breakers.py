"""Circuit breakers over HTTP: ``GET /api/breakers``, ``POST /api/breakers/<name>/reset``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel

from k1.recovery import breakers
from k1.web.auth import require_auth, require_operator
from k1.web.contract import Error, responses, validate
from k1.web.errors import Answer, APIError

bp = Blueprint("breakers", __name__)


class Breaker(BaseModel):
    name: str
    state: str


class Breakers(BaseModel):
    breakers: list[dict[str, Any]]


@bp.get("/api/breakers")
@require_auth
@validate(tags=("breakers",), resp=responses(HTTP_200=Breakers))
def list_breakers() -> Answer:
    return jsonify(breakers=[status.as_dict() for status in breakers.all_statuses()])


@bp.post("/api/breakers/<name>/reset")
@require_auth
@validate(tags=("breakers",), resp=responses(HTTP_200=Breaker, HTTP_403=Error, HTTP_404=Error))
def reset(name: str) -> Answer:
    require_operator()
    status = breakers.reset(name)
    if status is None:
        raise APIError(404, "circuit breaker not found", detail=name)
    return jsonify(status.as_dict())
