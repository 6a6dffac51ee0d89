"""Stop without losing work: the Procfile's worker, sent SIGTERM to its whole process group
while busy (as honcho and a Heroku dyno do), finishes what it can within the grace, hands
the rest back to the queue at once, and exits before the SIGKILL that comes 30 s later."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from tests.conftest import LOGS
from tests.support import ROOT, VENV_BIN, Process

pytestmark = pytest.mark.slow

HEROKU_KILL_AFTER = 30  # s from SIGTERM to SIGKILL on a dyno
GRACE = 4  # s, K1_WORKER_SHUTDOWN_GRACE here: flaky sleeps 10 s at most
SHORT_MS, LONG_MS = 2_000, 9_500  # a task that fits in the grace, one that does not
START_TIMEOUT = 60  # s for a worker to start and take both tasks on a loaded machine


def procfile_command(process: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name == process:
            return command.strip()
    raise AssertionError(f"no {process} line in the Procfile")


@pytest.fixture
def broker(services: dict[str, object]) -> Iterator[str]:
    """A Redis database of its own: no other test's worker takes these tasks."""
    url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def procfile_worker(name: str, broker: str) -> Process:
    # The line through a shell, as a Procfile host runs it (bash execs a lone command); a
    # new session, so the group signal reaches the worker and its pool children only.
    return Process(name, ["bash", "-c", procfile_command("worker")],
                   {**os.environ, "REDIS_URL": broker, "K1_WORKER_SHUTDOWN_GRACE": str(GRACE),
                    "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}, LOGS).start()


def test_sigterm_to_the_group_finishes_or_hands_back_every_task(broker: str) -> None:
    app = Celery(broker=broker, backend=broker)
    client = redis.Redis.from_url(broker, decode_responses=True)
    first = procfile_worker("worker-sigterm", broker)
    try:
        first.wait_until(lambda: app.control.ping(timeout=0.5), START_TIMEOUT,
                         "did not answer ping")
        short, long = (app.send_task("k1.tasks.demo.flaky", kwargs={
            "project_id": "ops", "sleep_ms": ms}) for ms in (SHORT_MS, LONG_MS))
        first.wait_until(lambda: short.state == long.state == "STARTED", START_TIMEOUT,
                         "did not start both tasks")
        stopped_at = time.monotonic()
        os.killpg(first.pid, signal.SIGTERM)
        try:
            first.popen.wait(HEROKU_KILL_AFTER)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running {HEROKU_KILL_AFTER} s after SIGTERM:\n"
                        f"{first.log_tail()}")
        exit_s = time.monotonic() - stopped_at
    finally:
        first.kill()
    assert short.state == "SUCCESS", first.log_tail()
    # The long task went back to the queue before the worker exited: nothing is left in
    # the unacked set for the visibility timeout (1 h) to bring back.
    assert client.hlen("unacked") == 0 and client.llen("celery") == 1, first.log_tail()
    assert "WorkerLostError" not in first.log_tail(400)

    second = procfile_worker("worker-after-sigterm", broker)
    try:
        second.wait_until(lambda: long.state == "SUCCESS", START_TIMEOUT + LONG_MS / 1000,
                          "never completed the handed-back task")
    finally:
        second.stop()
    counts = client.hgetall("k1:metrics:tasks")
    assert counts.get("succeeded") == "2", counts  # each task completed exactly once
    print(f"worker exited {exit_s:.1f} s after SIGTERM")
