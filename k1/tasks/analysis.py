"""``analyze_profile``: per-project work that calls an external service, once.

The POST is an external effect (:meth:`k1.tasks.effects.Effects.external`): the service
receives an ``Idempotency-Key`` derived from the task's idempotency key, so a retried,
redelivered or replayed task never has a profile analysed twice, and a rerun after a
success returns the kept result without calling the service at all.
"""

from __future__ import annotations

from typing import Any

import requests

from k1.celery import app
from k1.recovery.breakers import breaker
from k1.settings import get_settings
from k1.tasks.base import K1Task

ANALYZE_TIMEOUT = (3.05, 30)  # (connect, read) seconds for the external analysis service
ANALYSIS_BREAKER = "analysis"  # the external profile-analysis service


@app.task(base=K1Task, bind=True, name="k1.tasks.analyze_profile", public=True)
def analyze_profile(self: K1Task, project_id: str, data_path: str) -> dict[str, Any]:
    """Ask the external analysis service to profile ``data_path`` for ``project_id``.

    Guarded by the ``analysis`` breaker; the request is an effect named ``analyze``, sent
    with its own ``Idempotency-Key`` so that the service analyses it once.
    """
    url = f"{get_settings().external_service_url}/analyze"
    body = {"project_id": project_id, "data_path": data_path}
    return self.effects.external(
        "analyze", lambda key: breaker(ANALYSIS_BREAKER).call(post_json, url, body,
                                                              idempotency_key=key))


def post_json(url: str, body: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    """POST ``body`` with an ``Idempotency-Key`` header; the JSON answer (HTTP errors raise)."""
    response = requests.post(url, json=body, timeout=ANALYZE_TIMEOUT,
                             headers={"Idempotency-Key": idempotency_key})
    response.raise_for_status()
    return response.json()
