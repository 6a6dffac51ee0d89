"""Two real worker nodes that also import the flow tests' tasks (tests/flow/tasks.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import celery_worker
from tests.support import Process, wait_for

TASKS = "tests.flow.tasks"


# Package scope: they consume the default queue, so they must be gone before other
# packages' tests, which expect the session worker to run what they send.
@pytest.fixture(scope="package")
def flow_workers(services: dict[str, object]) -> Iterator[list[Process]]:
    workers = [celery_worker(f"flow-{n}", concurrency=2, include=TASKS) for n in "ab"]
    yield workers
    for worker in workers:
        worker.stop()


@pytest.fixture
def redis_client(services: dict[str, object]):
    from k1.connections import get_redis

    return get_redis()


def until_workers_reread_limits() -> None:
    """Return once every worker process starts its next task under the run-time limits
    just written. A pool process re-reads them lazily, at a task's start, once its copy is
    REFRESH_INTERVAL old (aged from before its read, k1.flow.limits.Refreshed): a bound on
    a clock, not an event. No process announces a re-read (that would cost each one a
    Redis write per interval), and a marker task cannot be made to reach every pool
    process of every worker, so this one wait stays a sleep, the documented bound plus
    nothing else."""
    from k1.flow.limits import REFRESH_INTERVAL

    time.sleep(REFRESH_INTERVAL)


Run = tuple[float, float, int, int, str]  # start, end, pid, attempt, task id


def runs(tag: str) -> list[Run]:
    """The recorded runs under ``tag``, by start time."""
    from k1.connections import get_redis
    from tests.flow.tasks import RUNS

    rows = []
    for line in get_redis().lrange(RUNS.format(tag), 0, -1):
        start, end, pid, attempt, task_id = line.split()
        rows.append((float(start), float(end), int(pid), int(attempt), task_id))
    return sorted(rows)


def wait_runs(tag: str, count: int, timeout: float) -> list[Run]:
    return wait_for(lambda: len(runs(tag)) >= count and runs(tag), timeout=timeout,
                    interval=0.2, message=lambda: f"{len(runs(tag))} of {count} runs of {tag}")


def send(task: str, count: int, *, queue: str | None = None, **kwargs: object) -> list[str]:
    from k1.celery import app

    with app.producer_or_acquire() as producer:
        return [app.send_task(task, kwargs=kwargs, producer=producer, queue=queue).id
                for _ in range(count)]


def max_overlap(rows: list[Run]) -> int:
    """The most runs in progress at one moment (from their start and end times)."""
    edges = sorted([(start, 1) for start, *_ in rows] + [(end, -1) for _, end, *_ in rows],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at a tie
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak
