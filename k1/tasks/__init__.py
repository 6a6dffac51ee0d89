"""K1's sample tasks. Profile analysis is the domain's example of per-project work."""

from __future__ import annotations

from typing import Any

import requests

from k1.celery import app
from k1.settings import get_settings
from k1.tasks.base import K1Task

ANALYZE_TIMEOUT = (3.05, 30)  # (connect, read) seconds for the external analysis service


@app.task(base=K1Task, name="k1.tasks.analyze_profile")
def analyze_profile(project_id: str, data_path: str) -> dict[str, Any]:
    """Ask the external analysis service to profile ``data_path`` for ``project_id``."""
    response = requests.post(
        f"{get_settings().external_service_url}/analyze",
        json={"project_id": project_id, "data_path": data_path},
        timeout=ANALYZE_TIMEOUT,
    )
    response.raise_for_status()
    return response.json()


def public_task_names() -> list[str]:
    """Names of the tasks clients may start, sorted."""
    app.loader.import_default_modules()  # the modules in celeryconfig.imports register theirs
    return sorted(name for name, task in app.tasks.items() if getattr(task, "public", False))
