"""``GET /api/metrics`` (JSON) and ``GET /metrics`` (Prometheus text): the validation
metrics beside their seed targets; ``/metrics`` also has flow control's series (the waits
limits caused, each limit's use: :mod:`k1.flow.metrics`) and the fleet's (queue depths and
oldest messages' ages, workers online: :mod:`k1.flow.fleet`). Both need a bearer token; for
Prometheus give the scrape job a long-lived one (``authorization: {credentials: <token>}``).
"""

from typing import Any

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from k1.events import heartbeats, metrics
from k1.flow import admin, fleet, queues
from k1.flow import metrics as flow_metrics
from k1.recovery.dlq.store import DeadLetterStore
from k1.web.auth import require_auth
from k1.web.contract import responses, validate
from k1.web.errors import Answer
from k1.web.offload import blocking

bp = Blueprint("metrics", __name__)


def dlq_stats() -> dict[str, Any]:
    """Platform-wide DLQ depth and daily average (``DeadLetterStore.summary``).

    Only the totals: the metrics go to every signed-in user, and the split by task and
    exception would tell one project about another's (``GET /api/dlq/stats`` is scoped).
    Touches the database: call it through :func:`k1.web.offload.blocking`.
    """
    try:
        return DeadLetterStore().summary()
    except Exception as exc:  # the DLQ's database down must not take the metrics down
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


class Metrics(BaseModel):
    healthy: bool
    metrics: list[dict[str, Any]]
    series: Any = None


@bp.get("/api/metrics")
@require_auth
@validate(tags=("metrics",), resp=responses(HTTP_200=Metrics))
def validation_metrics() -> Answer:
    return jsonify(metrics.report(blocking(dlq_stats)))


@bp.get("/metrics")
@require_auth
@validate(tags=("metrics",), resp=responses(HTTP_200=None))
def prometheus() -> Answer:
    limits = flow_metrics.Collector(admin.overview())
    fleet_series = fleet.Collector(fleet.queues(set(queues.paused_queues())),
                                   len(heartbeats.online()))
    body = metrics.prometheus_text(blocking(dlq_stats), others=[limits, fleet_series])
    return Response(body, content_type=CONTENT_TYPE_LATEST)
