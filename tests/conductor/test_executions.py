"""Starts with an idempotency key against the real Conductor server: one workflow per key,
however many callers race for it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from k1.conductor import executions
from k1.conductor.client import ConductorClient, ConductorNotFound
from k1.connections import get_redis

RACERS = 8  # concurrent starts with one key: without the lock, each found no record


@pytest.fixture
def quick_workflow(conductor: ConductorClient, unique: str) -> str:
    """A workflow of its own (one SET_VARIABLE system task: it completes with no worker,
    and no test's poller takes anything from it)."""
    name = f"k1_start_once_{unique}"
    conductor.create_workflow_def({
        "name": name, "version": 1, "schemaVersion": 2, "ownerEmail": "k1@localhost",
        "inputParameters": ["project_id"],
        "tasks": [{"name": "mark", "taskReferenceName": "mark", "type": "SET_VARIABLE",
                   "inputParameters": {"seen": "${workflow.input.project_id}"}}],
    })
    return name


def test_concurrent_starts_with_one_key_start_one_workflow(
        conductor: ConductorClient, quick_workflow: str, services: dict, unique: str) -> None:
    key = f"race-{unique}"
    gate = threading.Barrier(RACERS)

    def racer(_: int) -> str:
        client = ConductorClient(conductor.base_url)  # a session per thread
        gate.wait(timeout=30)
        return executions.start(quick_workflow, {}, project_id="acme", idempotency_key=key,
                                client=client)

    with ThreadPoolExecutor(RACERS) as pool:
        workflow_ids = list(pool.map(racer, range(RACERS)))
    assert len(set(workflow_ids)) == 1, f"{len(set(workflow_ids))} workflows for one key"
    (workflow_id,) = set(workflow_ids)
    assert conductor.get_workflow(workflow_id)["workflowName"] == quick_workflow
    assert get_redis().get(executions.START_KEY.format(key)) == workflow_id
    assert not get_redis().exists(executions.STARTING_KEY.format(key)), "the lock stayed"
    # Once made, a start with the key answers the same without asking Conductor again.
    assert executions.start("no_such_workflow_at_all", idempotency_key=key,
                            client=conductor) == workflow_id


def test_a_failed_start_frees_its_key_for_the_next_try(
        conductor: ConductorClient, quick_workflow: str, services: dict, unique: str) -> None:
    key = f"fail-{unique}"
    with pytest.raises(ConductorNotFound):
        executions.start(f"k1_missing_{unique}", {}, idempotency_key=key, client=conductor)
    assert not get_redis().exists(executions.START_KEY.format(key))  # nothing recorded
    assert not get_redis().exists(executions.STARTING_KEY.format(key)), "the lock stayed"
    workflow_id = executions.start(quick_workflow, {}, idempotency_key=key, client=conductor)
    assert conductor.get_workflow(workflow_id)["workflowName"] == quick_workflow


def test_a_start_waiting_on_the_key_answers_the_holders_workflow(
        conductor: ConductorClient, quick_workflow: str, services: dict, unique: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While another caller holds the key's lock, a start waits; when the holder records
    its workflow and lets go, the waiting start answers that one and starts none. Held
    past the wait, the start gives up as transient (the Celery task retries it)."""
    key = f"wait-{unique}"
    holder = get_redis().lock(executions.STARTING_KEY.format(key), timeout=60)
    assert holder.acquire(blocking=False)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(executions.start, quick_workflow, {}, idempotency_key=key,
                              client=conductor)
        get_redis().set(executions.START_KEY.format(key), "the-holders-workflow", ex=60)
        holder.release()
        assert waiting.result(timeout=executions.START_WAIT + 10) == "the-holders-workflow"

    monkeypatch.setattr(executions, "START_WAIT", 0.5)
    other = f"held-{unique}"
    held = get_redis().lock(executions.STARTING_KEY.format(other), timeout=60)
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(executions.StartInProgress, match="still being made"):
            executions.start(quick_workflow, {}, idempotency_key=other, client=conductor)
    finally:
        held.release()
    assert not get_redis().exists(executions.START_KEY.format(other))
