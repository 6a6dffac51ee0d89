"""Baselines for the benchmarks: K1's tasks without K1's wrapping.

``flaky_plain`` has ``k1.tasks.demo.flaky``'s body on a plain Celery task: no retry
policy, no classification, no dead-letter hook. Workers load it with
``--include bench.baseline_tasks``.
"""

from __future__ import annotations

from typing import Any

from k1.celery import app


@app.task(name="bench.baseline_tasks.flaky_plain")
def flaky_plain(project_id: str) -> dict[str, Any]:
    return {"project_id": project_id, "runs": 1}
