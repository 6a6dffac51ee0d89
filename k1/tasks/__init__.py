"""K1's sample tasks. Profile analysis is the domain's example of per-project work."""

from __future__ import annotations

from typing import Any

import requests

from k1.celery import app, load_task_modules
from k1.recovery.breakers import breaker
from k1.settings import get_settings
from k1.tasks.base import K1Task

ANALYZE_TIMEOUT = (3.05, 30)  # (connect, read) seconds for the external analysis service


ANALYSIS_BREAKER = "analysis"  # the external profile-analysis service


@app.task(base=K1Task, bind=True, name="k1.tasks.analyze_profile")
def analyze_profile(self: K1Task, project_id: str, data_path: str) -> dict[str, Any]:
    """Ask the external analysis service to profile ``data_path`` for ``project_id``.

    Guarded by the ``analysis`` breaker; the idempotency key lets the service recognise
    a retried or replayed request.
    """
    return breaker(ANALYSIS_BREAKER).call(
        _post_json, f"{get_settings().external_service_url}/analyze",
        {"project_id": project_id, "data_path": data_path},
        idempotency_key=self.idempotency_key(),
    )


def _post_json(url: str, body: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
    response = requests.post(url, json=body, timeout=ANALYZE_TIMEOUT,
                             headers={"Idempotency-Key": idempotency_key})
    response.raise_for_status()
    return response.json()


def public_task_names() -> list[str]:
    """Names of the tasks clients may start, sorted."""
    load_task_modules()
    return sorted(name for name, task in app.tasks.items() if getattr(task, "public", False))
