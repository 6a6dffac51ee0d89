"""``GET /api/metrics`` (JSON) and ``GET /metrics`` (Prometheus text): the validation
metrics beside their seed targets. Both need a bearer token; for Prometheus give the
scrape job a long-lived one (``authorization: {credentials: <token>}``).
"""

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST

from k1.events import metrics
from k1.web.auth import require_auth
from k1.web.offload import blocking

bp = Blueprint("metrics", __name__)


@bp.get("/api/metrics")
@require_auth
def validation_metrics():  # type: ignore[no-untyped-def]
    return jsonify(metrics.report(blocking(metrics.dlq_stats)))


@bp.get("/metrics")
@require_auth
def prometheus():  # type: ignore[no-untyped-def]
    body = metrics.prometheus_text(blocking(metrics.dlq_stats))
    return Response(body, content_type=CONTENT_TYPE_LATEST)
