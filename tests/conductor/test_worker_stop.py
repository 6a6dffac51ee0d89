"""``k1 conductor-worker`` on SIGTERM (to its whole process group, as a Procfile host
sends it) while it is busy: it exits within the 30 s grace, and no task it polled is
left IN_PROGRESS, neither before its hand-off to Celery nor with its IN_PROGRESS answer
unsent (such a task would wait for the task definition's ``responseTimeoutSeconds``,
here 10 minutes).

Real Conductor server, real Redis; the task type is served by no Celery worker, so a
handed-off task stays claimed and visible.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from k1.conductor.bridge import CLAIM_KEY
from k1.conductor.client import ConductorClient
from tests.conductor.conftest import _log
from tests.conftest import k1_process
from tests.support import VENV_BIN, wait_for

pytestmark = pytest.mark.slow

TASK_TYPE = "k1_test.stop_probe"  # no Celery task of that name: claims stay visible
WORKFLOW = "k1_test_stop_probe"
BACKLOG = 300  # more than the poller hands off in its first seconds
GRACE = 30  # s between SIGTERM and SIGKILL on a Procfile host


@pytest.fixture(scope="module")
def probe_workflow(conductor: ConductorClient) -> str:
    conductor.register_task_defs([{
        "name": TASK_TYPE, "retryCount": 0, "timeoutSeconds": 3600,
        "responseTimeoutSeconds": 600, "ownerEmail": "k1@localhost"}])
    if conductor.get_workflow_def(WORKFLOW, 1) is None:
        conductor.create_workflow_def({
            "name": WORKFLOW, "version": 1, "schemaVersion": 2, "ownerEmail": "k1@localhost",
            "tasks": [{"name": TASK_TYPE, "taskReferenceName": "probe", "type": "SIMPLE"}],
            "timeoutPolicy": "ALERT_ONLY", "timeoutSeconds": 0})
    return WORKFLOW


def test_sigterm_stops_polling_and_leaves_no_polled_task_behind(
        conductor_env, conductor: ConductorClient, bridge_redis: redis.Redis,
        probe_workflow: str) -> None:
    ids = [conductor.start_workflow(probe_workflow, {"project_id": "acme"})
           for _ in range(BACKLOG)]
    poller = k1_process("conductor-worker-stop", str(VENV_BIN / "k1"), "conductor-worker",
                        "--no-register", "--task-type", TASK_TYPE,
                        env={**conductor_env, "K1_LOG_LEVEL": "INFO"}).start()
    try:
        poller.wait_until(lambda: "conductor worker polling" in _log(poller), 60,
                          "did not start polling")

        # Busy: some tasks handed off already, more still queued.
        wait_for(lambda: bridge_redis.exists(*(CLAIM_KEY.format(t) for t in
                                               _task_ids(conductor, ids[:20]))),
                 timeout=60, message="the poller handed nothing off")
        os.killpg(poller.pid, signal.SIGTERM)
        sent = time.monotonic()
        assert poller.popen is not None
        poller.popen.wait(GRACE)  # raises TimeoutExpired past the grace
        took = time.monotonic() - sent
    finally:
        if poller.alive():
            poller.kill()
    assert took < GRACE, f"exited {took:.1f} s after SIGTERM"
    assert "the poller did not stop" not in _log(poller)

    orphans, unanswered, claimed, queued = [], [], 0, 0
    for wid in ids:
        status, task_id = _probe_task(conductor, wid)
        is_claimed = task_id is not None and bridge_redis.exists(CLAIM_KEY.format(task_id))
        claimed += bool(is_claimed)
        if status == "IN_PROGRESS":  # polled, and the poller's answer never landed
            (unanswered if is_claimed else orphans).append(task_id)
        elif status == "SCHEDULED" and not is_claimed:
            queued += 1
    assert not orphans, f"{len(orphans)} polled task(s) never handed off: {orphans[:5]}"
    # Handed off but not answered IN_PROGRESS + callback: Conductor would wait for the
    # response timeout unless the Celery task's own report came first.
    assert not unanswered, f"{len(unanswered)} hand-off(s) never answered: {unanswered[:5]}"
    assert claimed > 0
    # It stopped taking work: the backlog was not drained after the signal.
    assert queued > 0, f"all {BACKLOG} tasks were taken ({claimed} handed off)"


def _task_ids(conductor: ConductorClient, workflow_ids: list[str]) -> list[str]:
    return [t for t in (_probe_task(conductor, wid)[1] for wid in workflow_ids) if t]


def _probe_task(conductor: ConductorClient, workflow_id: str) -> tuple[str | None, str | None]:
    tasks = conductor.get_workflow(workflow_id, include_tasks=True).get("tasks") or []
    probe = next((t for t in tasks if t.get("referenceTaskName") == "probe"), None)
    return (probe.get("status"), probe.get("taskId")) if probe else (None, None)
