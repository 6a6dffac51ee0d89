"""``GET /api/metrics`` (JSON) and ``GET /metrics`` (Prometheus text): the validation
metrics beside their seed targets. Both need a bearer token; for Prometheus give the
scrape job a long-lived one (``authorization: {credentials: <token>}``).
"""

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from k1.events import metrics
from k1.web.auth import require_auth
from k1.web.contract import responses, validate
from k1.web.offload import blocking

bp = Blueprint("metrics", __name__)


class Metrics(BaseModel):
    healthy: bool
    metrics: list[dict[str, Any]]
    series: Any = None


@bp.get("/api/metrics")
@require_auth
@validate(tags=("metrics",), resp=responses(HTTP_200=Metrics))
def validation_metrics():  # type: ignore[no-untyped-def]
    return jsonify(metrics.report(blocking(metrics.dlq_stats)))


@bp.get("/metrics")
@require_auth
@validate(tags=("metrics",), resp=responses(HTTP_200=None))
def prometheus():  # type: ignore[no-untyped-def]
    body = metrics.prometheus_text(blocking(metrics.dlq_stats))
    return Response(body, content_type=CONTENT_TYPE_LATEST)
