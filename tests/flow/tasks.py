"""Tasks for the flow-control tests (workers import them with ``--include``): each run
records its start and end time (Redis server clock, shared by every worker) in a list."""

from __future__ import annotations

import os
import time
from datetime import datetime

from k1.celery import app
from k1.connections import get_redis
from k1.flow import Limit, Unique, limiter
from k1.recovery.errors import TransientError
from k1.tasks.base import K1Task

RUNS = "k1:test:flow:runs:{}"  # list of "start end pid attempt task_id"
STARTED = RUNS + ":started"  # task ids, as each run starts
# When each run was let through: its reserved start (the ETA a rate limit sent it back
# with) or, admitted at once, its start. A loaded worker starts a run late after its ETA,
# which a limit cannot prevent; what the limit decides is this.
ADMITTED = RUNS + ":admitted"
TEST_LEASE = 3.0  # seconds: a SIGKILLed holder's slot must free within a test's patience


def _now() -> float:
    seconds, micros = get_redis().time()
    return seconds + micros / 1e6


def _hold(task: K1Task, tag: str, ms: int) -> float:
    started = _now()
    eta = task.request.eta
    admitted = datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else started
    get_redis().rpush(ADMITTED.format(tag), str(admitted))
    get_redis().rpush(STARTED.format(tag), str(task.request.id))
    time.sleep(ms / 1000)
    get_redis().rpush(RUNS.format(tag), f"{started} {_now()} {os.getpid()} {task.attempt()} "
                                        f"{task.request.id}")
    return started


@app.task(base=K1Task, bind=True, name="tests.flow.hold")
def hold(self: K1Task, project_id: str, tag: str, ms: int = 0) -> float:
    """Sleep ``ms``; record the run under ``tag``."""
    return _hold(self, tag, ms)


@app.task(base=K1Task, bind=True, name="tests.flow.paced")
def paced(self: K1Task, project_id: str, tag: str, ms: int = 0) -> float:
    """:func:`hold` for run-time limits (set by the tests themselves)."""
    return _hold(self, tag, ms)


@app.task(base=K1Task, bind=True, name="tests.flow.limited",
          limits=[Limit("test-pair", concurrency=2, per="project", lease=TEST_LEASE)])
def limited(self: K1Task, project_id: str, tag: str, ms: int = 0) -> float:
    """:func:`hold` under a code limit: two at once per project."""
    return _hold(self, tag, ms)


@app.task(base=K1Task, bind=True, name="tests.flow.guarded")
def guarded(self: K1Task, project_id: str, tag: str) -> float:
    """A limiter (5 per second per tag) around the "external call": the recorded run."""
    with limiter("test-guard", tag, rate="5/s"):
        return _hold(self, tag, 0)


@app.task(base=K1Task, bind=True, name="tests.flow.single", public=True, unique=True)
def single(self: K1Task, project_id: str, tag: str, ms: int = 0, fail_times: int = 0) -> float:
    """:func:`hold`, unique per arguments; its first ``fail_times`` attempts fail
    transiently (after recording their run)."""
    started = _hold(self, tag, ms)
    if self.attempt() <= fail_times:
        raise TransientError(f"attempt {self.attempt()} of {tag} fails")
    return started


@app.task(base=K1Task, bind=True, name="tests.flow.single_short", public=True,
          unique=Unique(per="project", ttl=TEST_LEASE))
def single_short(self: K1Task, project_id: str, tag: str, ms: int = 0) -> float:
    """:func:`hold`, unique per project with a claim of :data:`TEST_LEASE` seconds."""
    return _hold(self, tag, ms)
