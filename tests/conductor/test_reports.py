"""The reporter against the real Conductor server and Redis, in this process: a report from
the stream completes its Conductor task and is acknowledged; one that comes before the
poller's IN_PROGRESS answer waits for it; one a dead reporter left pending, or one that
could not reach Conductor, is made by another reporter.

The Conductor tasks here are of a type of their own that no conductor worker polls: the
test polls and answers for the bridge's poller. The reporters read the test process's
Redis (database 0), not the bridge processes' (database 1), whose reporters would take
the reports first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from k1.conductor import bridge
from k1.conductor.client import ConductorClient
from k1.conductor.reports import GROUP, Reporter
from k1.connections import get_redis
from k1.recovery import breakers
from tests.conductor.conftest import wait_for_workflow
from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow

# The callback a poller asks for: far longer than any wait here, so a COMPLETED task
# was completed by the report, not by a callback poll.
CALLBACK_AFTER = 300
QUICK = 15.0  # s within which a report is made on a loaded machine (the callback: 300)


@pytest.fixture
def store(services: dict[str, object]) -> Iterator[redis.Redis]:
    client = get_redis()
    client.delete(bridge.REPORT_STREAM)
    yield client
    client.delete(bridge.REPORT_STREAM)


@pytest.fixture
def reporters(conductor: ConductorClient) -> Iterator[list[Reporter]]:
    """Reporters started by the test (``start(...)``), stopped after it."""
    started: list[Reporter] = []
    yield started
    for reporter in started:
        reporter.stop(10)


def start(reporters: list[Reporter], conductor: ConductorClient, **options: Any) -> Reporter:
    options.setdefault("conductor_url", conductor.base_url)
    reporter = Reporter(get_redis(), name=f"test-{uuid.uuid4().hex[:8]}", **options).start()
    reporters.append(reporter)
    return reporter


def polled_task(conductor: ConductorClient, unique: str) -> dict[str, Any]:
    """A new one-task workflow's task, polled (IN_PROGRESS, as the bridge's poller leaves
    it until its answer lands)."""
    task_type = f"k1test.reports.{unique}"
    conductor.register_task_defs([{"name": task_type, "retryCount": 0, "timeoutSeconds": 600,
                                   "responseTimeoutSeconds": 600}])
    conductor.create_workflow_def({
        "name": f"k1test_reports_{unique}", "version": 1, "schemaVersion": 2,
        "tasks": [{"name": task_type, "taskReferenceName": "only", "type": "SIMPLE"}],
        "timeoutPolicy": "ALERT_ONLY", "timeoutSeconds": 0})
    workflow_id = conductor.start_workflow(f"k1test_reports_{unique}", {})
    task = wait_for(lambda: conductor._call("GET", f"/tasks/poll/{task_type}",
                                            params={"workerid": "k1-test"}),
                    timeout=30, message=f"{task_type} was never polled")
    assert task["workflowInstanceId"] == workflow_id
    return task


def answer_in_progress(conductor: ConductorClient, task: dict[str, Any], *,
                       mark: bool = True) -> None:
    """What the bridge's poller answers to a hand-off, and its mark once it has landed."""
    conductor.update_task(task["workflowInstanceId"], task["taskId"], "IN_PROGRESS",
                          output={"celery_task_id": "celery-1"},
                          callback_after_seconds=CALLBACK_AFTER)
    if mark:
        bridge.mark_answered(task["taskId"])


def add_report(task: dict[str, Any], output: dict[str, Any]) -> None:
    bridge.report(task["taskId"], task["workflowInstanceId"], bridge.COMPLETED, output=output,
                  celery_task_id="celery-1", task_name=task["taskDefName"], check_state=False)


def pending(store: redis.Redis) -> int:
    return store.xpending(bridge.REPORT_STREAM, GROUP)["pending"]


def test_a_report_completes_its_task_and_is_acknowledged(
        store, reporters, conductor: ConductorClient, unique: str) -> None:
    task = polled_task(conductor, unique)
    answer_in_progress(conductor, task)
    start(reporters, conductor)
    add_report(task, {"score": 7})
    workflow = wait_for_workflow(conductor, task["workflowInstanceId"], "COMPLETED",
                                 timeout=QUICK)
    assert workflow["output"]["score"] == 7
    wait_for(lambda: store.xlen(bridge.REPORT_STREAM) == 0 and pending(store) == 0,
             timeout=10, message="the report was not acknowledged and deleted")
    assert not store.exists(bridge.ANSWERED_KEY.format(task["taskId"]))


@pytest.mark.parametrize("mark", [True, False], ids=["marked", "unmarked"])
def test_a_report_before_the_in_progress_answer_waits_for_it(
        store, reporters, conductor: ConductorClient, unique: str, mark: bool) -> None:
    """The poller's IN_PROGRESS answer would undo a COMPLETED sent before it. The report
    waits for the poller's mark; without one (a poller that died before marking), it
    asks Conductor until the task is no longer IN_PROGRESS."""
    task = polled_task(conductor, unique)
    reporter = start(reporters, conductor)
    add_report(task, {"score": 8})
    # The answer has not landed: the report waits, holding no thread.
    wait_for(lambda: reporter._waiting, timeout=QUICK, message="the report never waited")
    assert conductor.get_task(task["taskId"])["status"] == "IN_PROGRESS"
    answer_in_progress(conductor, task, mark=mark)  # the poller's answer lands late
    workflow = wait_for_workflow(conductor, task["workflowInstanceId"], "COMPLETED",
                                 timeout=QUICK)
    assert workflow["output"]["score"] == 8


def test_a_report_left_pending_by_a_dead_reporter_is_made(
        store, reporters, conductor: ConductorClient, unique: str) -> None:
    task = polled_task(conductor, unique)
    answer_in_progress(conductor, task)
    add_report(task, {"score": 9})
    dead = Reporter(get_redis(), name="dead-reporter", conductor_url=conductor.base_url)
    dead.ensure_group()
    # It read the report and died before making it: the report is pending, its own.
    assert dead._read()[0].fields["output"] == {"score": 9}
    assert pending(store) == 1
    start(reporters, conductor, claim_idle=0.2)
    workflow = wait_for_workflow(conductor, task["workflowInstanceId"], "COMPLETED",
                                 timeout=QUICK)
    assert workflow["output"]["score"] == 9
    wait_for(lambda: pending(store) == 0, timeout=10, message="the report is still pending")


def test_a_report_that_cannot_reach_conductor_stays_until_it_is_made(
        store, reporters, conductor: ConductorClient, unique: str) -> None:
    task = polled_task(conductor, unique)
    answer_in_progress(conductor, task)
    add_report(task, {"score": 10})
    away = start(reporters, conductor, conductor_url=f"http://127.0.0.1:{free_port()}/api")
    wait_for(lambda: away._waiting, timeout=QUICK, message="the report never failed")
    away.stop(10)  # stopped while the report waits for Conductor: it stays pending
    assert pending(store) == 1
    assert conductor.get_task(task["taskId"])["status"] == "SCHEDULED"
    breakers.reset("conductor")  # the failures above opened it for this process
    started = time.monotonic()
    start(reporters, conductor, claim_idle=0.2)
    workflow = wait_for_workflow(conductor, task["workflowInstanceId"], "COMPLETED",
                                 timeout=QUICK)
    assert workflow["output"]["score"] == 10
    assert time.monotonic() - started < CALLBACK_AFTER
