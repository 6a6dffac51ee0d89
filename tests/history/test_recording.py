"""Real workers, recorder, PostgreSQL: what a task went through, read back from history."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.conftest import API, celery_worker
from tests.history.conftest import wait_history
from tests.recovery.conftest import post_task
from tests.support import Process


def finished(body: dict[str, Any]) -> bool:
    """Ended, and its last attempt recorded as ending so (the state, from the result
    backend, may come before the recorder has folded that attempt)."""
    last = body["attempts"][-1]["outcome"] if body["attempts"] else None
    return (body["state"], last) in {("SUCCESS", "succeeded"), ("FAILURE", "failed"),
                                     ("FAILURE", "dead")}


def test_attempts_appear_in_order_with_their_workers(
        api: API, worker: Process, recorder: Process) -> None:
    task_id = post_task(api, "k1.tasks.demo.flaky", fail_times=2,
                        retry={"attempts": 3, "initial": 0.2, "maximum": 1})
    body = wait_history(api, task_id, finished)
    assert body["state"] == "SUCCESS", body
    attempts = body["attempts"]
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [
        (1, "retried"), (2, "retried"), (3, "succeeded")], attempts
    assert {a["worker"] for a in attempts} == {"worker@k1test"}
    assert all(a["exception"] == "TransientError" for a in attempts[:2])
    starts = [a["started_at"] for a in attempts]
    assert starts == sorted(starts) and None not in starts
    assert all(a["ended_at"] >= a["started_at"] for a in attempts)
    assert set(body["links"]) == {"dead_letter_id", "workflow_id", "conductor_task_id",
                                  "schedule", "replay_of", "replay_edited"}


def test_a_dead_task_links_its_dead_letter(api: API, worker: Process, recorder: Process) -> None:
    task_id = post_task(api, "k1.tasks.demo.flaky", permanent=True)
    body = wait_history(api, task_id, lambda b: finished(b) and b["links"]["dead_letter_id"])
    assert body["state"] == "FAILURE"
    assert [(a["attempt"], a["outcome"]) for a in body["attempts"]] == [(1, "dead")]
    assert body["error"]["type"] == "NonRetryableError"


def _pool_children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_a_run_whose_pool_process_died_is_lost_and_the_task_runs_again(
        api: API, services: dict[str, object], recorder: Process) -> None:
    own = celery_worker("lost-worker", concurrency=1, queues="history-lost")
    try:
        task_id = post_task(api, "k1.tasks.demo.flaky", queue="history-lost", sleep_ms=3000)
        wait_history(api, task_id, lambda b: any(
            a["started_at"] and a["outcome"] == "running" for a in b["attempts"]))
        (child,) = _pool_children(own.pid)
        os.kill(child, signal.SIGKILL)
        body = wait_history(api, task_id, finished)
    finally:
        own.stop()
    assert body["state"] == "SUCCESS", body
    runs = [(a["attempt"], a["outcome"], a["exception"]) for a in body["attempts"]]
    assert runs == [(1, "lost", "WorkerLostError"), (1, "succeeded", None)], runs
    assert body["attempts"][0]["worker"] == "lost-worker@k1test"


def test_a_run_handed_back_to_its_paused_queue_is_requeued_not_lost(
        api: API, services: dict[str, object], recorder: Process, unique: str) -> None:
    """A worker that missed the pause broadcast hands the task back (Reject(requeue=True))."""
    from k1.connections import get_redis
    from k1.flow.queues import PAUSED_KEY, resume

    queue = f"history-paused-{unique}"
    own = celery_worker(f"handback-{unique}", concurrency=1, queues=queue)
    client = get_redis()
    try:
        client.sadd(PAUSED_KEY, queue)  # the flag alone: the worker keeps consuming
        task_id = post_task(api, "k1.tasks.demo.flaky", queue=queue)
        body = wait_history(api, task_id, lambda b: any(
            a["outcome"] == "requeued" for a in b["attempts"]))
        assert body["attempts"][0]["exception"] == "Reject", body
        assert "paused" in body["attempts"][0]["message"], body
        resume(queue)  # the worker, told to stop consuming the queue, is told to go on
        body = wait_history(api, task_id, finished)
    finally:
        client.srem(PAUSED_KEY, queue)
        own.stop()
    assert body["state"] == "SUCCESS", body
    outcomes = [a["outcome"] for a in body["attempts"]]
    assert set(outcomes[:-1]) == {"requeued"} and outcomes[-1] == "succeeded", outcomes


def test_a_replay_links_the_dead_letter_it_came_from(
        web: str, make_token, api: API, worker: Process, recorder: Process) -> None:
    task_id = post_task(api, "k1.tasks.demo.flaky", permanent=True)
    letter_id = wait_history(api, task_id, lambda b: b["links"]["dead_letter_id"])[
        "links"]["dead_letter_id"]
    operator = API(web, make_token("ops", "*"))
    replayed = operator.post(f"/api/dlq/{letter_id}/replay", json={})
    assert replayed.status_code == 200, replayed.text
    body = wait_history(operator, replayed.json()["replay_task_id"], finished)
    assert body["links"]["replay_of"] == str(letter_id)
    assert body["links"]["replay_edited"] is None  # sent as it was
    assert body["task"] == "k1.tasks.demo.flaky" and body["project_id"] == "acme"
