"""Tasks for the flow-control tests (workers import them with ``--include``): each run
records its start and end time (Redis server clock, shared by every worker) in a list."""

from __future__ import annotations

import time

from k1.celery import app
from k1.connections import get_redis
from k1.tasks.base import K1Task

RUNS = "k1:test:flow:runs:{}"  # list of "start end pid task_id"


def _now() -> float:
    seconds, micros = get_redis().time()
    return seconds + micros / 1e6


def _record(tag: str, started: float, task_id: str | None) -> None:
    import os

    get_redis().rpush(RUNS.format(tag), f"{started} {_now()} {os.getpid()} {task_id}")


@app.task(base=K1Task, bind=True, name="tests.flow.hold")
def hold(self: K1Task, project_id: str, tag: str, ms: int = 0) -> float:
    """Sleep ``ms``; record the run under ``tag``."""
    started = _now()
    get_redis().rpush(RUNS.format(tag) + ":started", self.request.id)
    time.sleep(ms / 1000)
    _record(tag, started, self.request.id)
    return started
