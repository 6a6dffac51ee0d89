"""Two real worker nodes that also import the flow tests' tasks (tests/flow/tasks.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import celery_worker
from tests.support import Process

TASKS = "tests.flow.tasks"


@pytest.fixture(scope="session")
def flow_workers(services: dict[str, object]) -> Iterator[list[Process]]:
    workers = [celery_worker(f"flow-{n}", concurrency=2, include=TASKS) for n in "ab"]
    yield workers
    for worker in workers:
        worker.stop()


@pytest.fixture
def redis_client(services: dict[str, object]):  # type: ignore[no-untyped-def]
    from k1.connections import get_redis

    return get_redis()


def runs(tag: str) -> list[tuple[float, float, int, str]]:
    """The recorded runs under ``tag``: (start, end, pid, task id)."""
    from k1.connections import get_redis
    from tests.flow.tasks import RUNS

    rows = []
    for line in get_redis().lrange(RUNS.format(tag), 0, -1):
        start, end, pid, task_id = line.split()
        rows.append((float(start), float(end), int(pid), task_id))
    return rows


def max_overlap(rows: list[tuple[float, float, int, str]]) -> int:
    """The most runs in progress at one moment (from their start and end times)."""
    edges = sorted([(start, 1) for start, *_ in rows] + [(end, -1) for _, end, *_ in rows],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at a tie
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak
