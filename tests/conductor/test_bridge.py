"""The bridge end to end: real Conductor server, Celery worker, conductor worker, Redis,
PostgreSQL. Each sample workflow completes; a permanent failure fails the workflow, runs
its compensation and leaves a dead letter; a replay after the fix completes it; a
Conductor restart in the middle of a workflow loses nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests

from k1.conductor.bridge import CLAIM_KEY
from k1.conductor.client import ConductorClient
from k1.conductor.tasks import COMPENSATIONS_KEY
from k1.events import SOCKETIO_CHANNEL
from tests.conductor.conftest import wait_for_workflow
from tests.support import control, run_k1, wait_for

pytestmark = pytest.mark.slow



@pytest.fixture
def events(bridge_redis: redis.Redis) -> Iterator[list[dict[str, Any]]]:
    """workflow_event payloads published while the test runs."""
    received: list[dict[str, Any]] = []
    pubsub = bridge_redis.client().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(SOCKETIO_CHANNEL)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is None:
                continue
            payload = json.loads(message["data"])  # python-socketio publishes JSON
            if payload.get("event") == "workflow_event":
                received.append(payload["data"][0])  # emit(name, event)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    yield received
    stop.set()
    thread.join(2)
    pubsub.close()


def test_profile_workflow_completes_through_the_bridge(
        bridge, conductor_env, conductor: ConductorClient, bridge_redis: redis.Redis,
        events: list[dict[str, Any]], unique: str) -> None:
    done = run_k1("workflows", "start", "profile_workflow", "--project", "acme",
                  "--input", json.dumps({"data_path": f"s3://k1/{unique}.csv"}),
                  env=conductor_env)
    assert done.returncode == 0, done.stderr
    workflow_id = done.stdout.strip()
    workflow = wait_for_workflow(conductor, workflow_id, "COMPLETED")
    assert workflow["output"]["analysis"]["data_path"] == f"s3://k1/{unique}.csv"
    assert workflow["output"]["report"].startswith("Profile report for project acme")
    # Each Conductor task ran as exactly one Celery task, claimed by its Conductor task id.
    for task in workflow["tasks"]:
        assert bridge_redis.get(CLAIM_KEY.format(task["taskId"])), task["referenceTaskName"]
    seen = wait_for(lambda: {e["type"] for e in events if e["workflow_id"] == workflow_id}
                    >= {"started", "task_started", "task_completed", "completed"} and events,
                    timeout=10, message=lambda: f"workflow events: {events}")
    assert all(e["project_id"] == "acme" for e in seen if e["workflow_id"] == workflow_id)


def test_maintenance_workflow_runs_its_fork_and_completes(
        bridge, conductor: ConductorClient) -> None:
    workflow_id = conductor.start_workflow("maintenance_workflow",
                                           {"project_id": "platform", "older_than_days": 30})
    workflow = wait_for_workflow(conductor, workflow_id, "COMPLETED")
    refs = {t["referenceTaskName"]: t["status"] for t in workflow["tasks"]}
    assert refs["dlq_retention"] == refs["dlq_depth"] == refs["prune_executions"] == "COMPLETED"
    assert refs["housekeeping_join"] == "COMPLETED"
    assert isinstance(workflow["output"]["depth"], int)


def test_profile_review_switch_takes_the_report_branch(
        bridge, conductor: ConductorClient) -> None:
    workflow_id = conductor.start_workflow("profile_review_workflow", {
        "project_id": "acme", "data_path": "s3://k1/review.csv", "review": "report"})
    workflow = wait_for_workflow(conductor, workflow_id, "COMPLETED")
    refs = {t["referenceTaskName"] for t in workflow["tasks"]}
    assert "render" in refs and "check" not in refs
    assert workflow["output"]["report"].startswith("Profile report")


def dead_letter_for(workflow_id: str) -> Any:
    from k1.recovery.dlq.filters import LetterFilter
    from k1.recovery.dlq.store import DeadLetterStore

    letters, _ = DeadLetterStore().query(LetterFilter(), limit=200)
    return next((letter for letter in letters if letter.workflow_id == workflow_id), None)


def test_permanent_failure_fails_the_workflow_compensates_and_dead_letters(
        bridge, conductor: ConductorClient, bridge_redis: redis.Redis) -> None:
    workflow_id = conductor.start_workflow("profile_review_workflow", {
        "project_id": "acme", "data_path": "s3://k1/bad.csv", "review": "check",
        "check_permanent": True})
    workflow = wait_for_workflow(conductor, workflow_id, "FAILED")
    check = next(t for t in workflow["tasks"] if t["referenceTaskName"] == "check")
    assert check["status"] == "FAILED_WITH_TERMINAL_ERROR"
    assert "NonRetryableError" in check["reasonForIncompletion"]
    # Conductor starts the failure workflow just after marking this one FAILED.
    compensation_id = wait_for(
        lambda: conductor.get_workflow(workflow_id)["output"].get("conductor.failure_workflow"),
        timeout=30, message="the failure workflow was never started")
    compensation = wait_for_workflow(conductor, compensation_id, "COMPLETED")
    assert compensation["output"]["compensated"] == workflow_id
    record = json.loads(bridge_redis.hget(COMPENSATIONS_KEY, workflow_id))
    assert record["failed_task_id"] == check["taskId"]
    letter = wait_for(lambda: dead_letter_for(workflow_id), timeout=20,
                      message="no dead letter for the workflow")
    assert letter.task_name == "k1.tasks.demo.flaky"
    assert letter.conductor_task_id == check["taskId"]
    assert letter.idempotency_key == check["taskId"]
    assert letter.project_id == "acme"


def test_replay_after_the_fix_completes_the_failed_workflow(
        bridge, conductor_env, conductor: ConductorClient, external_service: str,
        unique: str) -> None:
    control(external_service, mode="fail", status=422)  # a bad request: not retried
    try:
        workflow_id = conductor.start_workflow("profile_workflow", {
            "project_id": "acme", "data_path": f"s3://k1/{unique}.csv"})
        failed = wait_for_workflow(conductor, workflow_id, "FAILED")
    finally:
        control(external_service, mode="ok")  # the fix
    analyze = next(t for t in failed["tasks"] if t["referenceTaskName"] == "analyze")
    assert analyze["status"] == "FAILED_WITH_TERMINAL_ERROR"
    letter = wait_for(lambda: dead_letter_for(workflow_id), timeout=20,
                      message="no dead letter for the workflow")
    assert letter.conductor_task_id == analyze["taskId"]

    done = run_k1("dlq", "replay", str(letter.id), env=conductor_env)
    assert done.returncode == 0, done.stdout + done.stderr
    workflow = wait_for_workflow(conductor, workflow_id, "COMPLETED")
    assert workflow["output"]["report"].startswith("Profile report for project acme")
    analyze = next(t for t in workflow["tasks"] if t["referenceTaskName"] == "analyze")
    assert analyze["status"] == "COMPLETED" and analyze["taskId"] == letter.conductor_task_id


def test_a_conductor_restart_mid_workflow_loses_nothing(
        bridge, conductor_server, conductor: ConductorClient, conductor_web: str,
        external_service: str, make_token, unique: str) -> None:
    token = make_token("ada", "acme")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    control(external_service, mode="slow", delay_ms=4000)
    try:
        in_flight = conductor.start_workflow("profile_workflow", {
            "project_id": "acme", "data_path": f"s3://k1/{unique}-restart.csv"})
        wait_for(lambda: any(t["status"] in ("SCHEDULED", "IN_PROGRESS") and
                             t["referenceTaskName"] == "analyze" for t in
                             conductor.get_workflow(in_flight, include_tasks=True)["tasks"]),
                 timeout=20, message="analyze never handed off")
        conductor_server.stop()  # analyze is running on Celery meanwhile
        # A start while the server is down is deferred to Celery, not lost.
        response = api.post(f"{conductor_web}/api/workflows/profile_workflow/start",
                            json={"project_id": "acme",
                                  "input": {"data_path": f"s3://k1/{unique}-deferred.csv"}},
                            timeout=30)
        assert response.status_code == 202, response.text
        deferred_task = response.json()["task_id"]
        conductor_server.start()
    finally:
        control(external_service, mode="ok")
    wait_for_workflow(conductor, in_flight, "COMPLETED", timeout=150)

    def deferred_result() -> Any:
        body = api.get(f"{conductor_web}/api/tasks/{deferred_task}", timeout=10).json()
        return body["result"] if body["state"] == "SUCCESS" else None

    started = wait_for(deferred_result, timeout=150, message="the deferred start never ran")
    wait_for_workflow(conductor, started["workflow_id"], "COMPLETED", timeout=150)
