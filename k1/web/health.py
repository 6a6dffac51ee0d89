"""``GET /api/health``: liveness of Redis, the database and Conductor (no auth)."""

from flask import Blueprint, jsonify

from k1.health import check_all
from k1.web.offload import blocking

bp = Blueprint("health", __name__)


@bp.get("/api/health")
def health():  # type: ignore[no-untyped-def]
    report = blocking(check_all)
    return jsonify(report), 200 if report["ok"] else 503
