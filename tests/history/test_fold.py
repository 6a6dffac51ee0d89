"""Folding a task's records into its row and attempts (pure logic)."""

from __future__ import annotations

import itertools
import random

from k1.history.fold import fold

T0 = 1_790_000_000.0


def rec(kind: str, at: float, attempt: int = 1, **fields: object) -> dict[str, object]:
    return {"id": f"{kind}-{at}", "type": kind, "task_id": "t1", "ts": T0 + at,
            "attempt": attempt, **fields}


RETRIED_THEN_SUCCEEDED = [
    rec("submitted", 0, task_name="k1.tasks.demo.flaky", project_id="acme", args=[],
        kwargs={"fail_times": 1}),
    rec("received", 1, worker="w1"), rec("started", 2, worker="w1"),
    rec("retried", 3, worker="w1", exception="TransientError", message="boom"),
    rec("received", 4, attempt=2, worker="w2"), rec("started", 5, attempt=2, worker="w2"),
    rec("succeeded", 6, attempt=2, worker="w2", result="{'ok': 1}", runtime_ms=12.5),
]


def test_attempts_in_order_with_their_workers_and_the_task_outcome() -> None:
    task, runs = fold("t1", RETRIED_THEN_SUCCEEDED)
    assert [(r["attempt"], r["worker"], r["outcome"]) for r in runs] == [
        (1, "w1", "retried"), (2, "w2", "succeeded")]
    assert runs[0]["exception_type"] == "TransientError"
    assert task["state"] == "SUCCESS" and task["attempts"] == 2 and task["worker"] == "w2"
    assert task["queue_wait_ms"] == 2000.0 and task["runtime_ms"] == 12.5
    assert task["result"] == "{'ok': 1}" and task["error_type"] is None


def test_any_order_and_duplicates_fold_to_the_same_rows() -> None:
    expected = fold("t1", RETRIED_THEN_SUCCEEDED)
    shuffled = RETRIED_THEN_SUCCEEDED * 2
    random.Random(7).shuffle(shuffled)
    assert fold("t1", shuffled) == expected


def test_a_lost_pool_process_requeues_the_task_and_ends_the_run_lost() -> None:
    records = [rec("received", 1, worker="w1"), rec("started", 2, worker="w1"),
               rec("lost", 3, worker="w1", exception="WorkerLostError")]
    task, runs = fold("t1", records)
    assert task["state"] == "REQUEUED"
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "lost")]
    task, runs = fold("t1", [*records, rec("received", 4, worker="w2")])
    assert task["state"] == "RECEIVED"
    assert [(r["attempt"], r["worker"], r["outcome"]) for r in runs] == [
        (1, "w1", "lost"), (1, "w2", "running")]


def test_a_message_handed_back_requeues_the_task_and_ends_the_run_requeued() -> None:
    """A paused queue's hand-back (Reject(requeue=True)) is no lost worker."""
    records = [rec("received", 1, worker="w1"), rec("started", 2, worker="w1"),
               rec("requeued", 3, worker="w1", exception="Reject",
                   message="queue q is paused")]
    task, runs = fold("t1", records)
    assert task["state"] == "REQUEUED"
    assert [(r["outcome"], r["exception_type"]) for r in runs] == [("requeued", "Reject")]
    task, runs = fold("t1", [*records, rec("received", 4, worker="w1"),
                             rec("started", 5, worker="w1"), rec("succeeded", 6, worker="w1")])
    assert task["state"] == "SUCCESS"
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "requeued"), (1, "succeeded")]


def test_the_same_attempt_received_again_means_its_worker_was_lost() -> None:
    """A worker killed outright sends nothing: the redelivery is the evidence."""
    task, runs = fold("t1", [rec("received", 1, worker="w1"), rec("started", 2, worker="w1"),
                             rec("received", 9, worker="w2")])
    assert task["state"] == "RECEIVED"
    assert [(r["worker"], r["outcome"]) for r in runs] == [("w1", "lost"), ("w2", "running")]


def test_dead_then_failed_is_one_dead_run_with_its_letter() -> None:
    task, runs = fold("t1", [rec("received", 1), rec("started", 2),
                             rec("dead", 3, exception="NonRetryableError", letter_id=42),
                             rec("failed", 3.001, exception="NonRetryableError", message="no")])
    assert [r["outcome"] for r in runs] == ["dead"]
    assert task["state"] == "FAILURE" and task["letter_id"] == 42
    assert task["error_type"] == "NonRetryableError"


def test_a_submission_recorded_after_the_run_does_not_turn_it_back_to_pending() -> None:
    records = RETRIED_THEN_SUCCEEDED[1:] + RETRIED_THEN_SUCCEEDED[:1]
    for permutation in itertools.islice(itertools.permutations(records), 50):
        assert fold("t1", list(permutation))[0]["state"] == "SUCCESS"
