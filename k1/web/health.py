"""``GET /api/health``: liveness of Redis, the database and Conductor (no auth)."""

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel

from k1.health import check_all
from k1.web.contract import Response, validate
from k1.web.errors import Answer
from k1.web.offload import blocking

bp = Blueprint("health", __name__)


class Health(BaseModel):
    ok: bool
    redis: dict[str, Any]
    database: dict[str, Any]
    conductor: dict[str, Any]


@bp.get("/api/health")
@validate(public=True, tags=("health",), resp=Response(HTTP_200=Health, HTTP_503=Health))
def health() -> Answer:
    report = blocking(check_all)
    return jsonify(report), 200 if report["ok"] else 503
