"""K1's own tasks have their own queue: a user backlog does not delay them."""

from __future__ import annotations

import time
import uuid

from tests.flow.conftest import runs
from tests.support import wait_for

BACKLOG = 1_000
USER_TASK_MS = 40  # the backlog lasts BACKLOG * 40 ms / 4 slots = 10 s at the least
PROMPT = 5.0  # seconds a platform task may take to start behind the backlog


def test_platform_task_starts_promptly_behind_a_user_backlog(flow_workers, redis_client):
    from k1.celery import app

    tag = uuid.uuid4().hex
    try:
        with app.producer_or_acquire() as producer:
            for _ in range(BACKLOG):
                app.send_task("tests.flow.hold", kwargs={"project_id": "acme", "tag": tag,
                                                         "ms": USER_TASK_MS},
                              producer=producer)
        wait_for(lambda: runs(tag), timeout=60, message="no user task ran at all")
        sent = time.monotonic()
        result = app.send_task("k1.dlq.snapshot_depth")
        assert result.get(timeout=30) is not None  # ran (bounded wait, then a clear failure)
        waited = time.monotonic() - sent
        left = redis_client.llen("celery")
        assert left > BACKLOG / 4, f"the backlog drained first ({left} left): no proof"
        assert waited < PROMPT, f"platform task took {waited:.1f}s behind {left} user tasks"
        print(f"platform task ran {waited:.2f}s after it was sent, {left} user tasks queued")
    finally:
        redis_client.delete("celery")


def test_platform_tasks_are_routed_to_the_platform_queue():
    from k1.celery import app

    for name in ("k1.dlq.drain_spool", "k1.conductor.report_outcome"):
        route = app.amqp.router.route({}, name)
        assert route["queue"].name == "k1.platform", name
    assert app.amqp.router.route({}, "k1.tasks.demo.flaky")["queue"].name == "celery"


def test_a_retry_goes_to_the_back_of_its_queue(flow_workers, redis_client):
    """The documented choice (docs/flow.md): a retry due in ~1 s is published behind the
    backlog queued when its task failed, and waits for it (the figure is printed)."""
    from k1.celery import app
    from k1.flow.queues import pause, resume

    ahead, behind_tag, key = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    queued_behind = BACKLOG // 2
    # All queued before any runs: sent while the workers run, the failed task's retry
    # could be published before the last of those "behind" it were (a slow sender).
    pause("celery")
    try:
        with app.producer_or_acquire() as producer:
            for tag, count in ((ahead, BACKLOG // 4), (None, 1), (behind_tag, queued_behind)):
                for _ in range(count):
                    if tag is None:  # fails once, retried after the policy's ~1 s
                        app.send_task("k1.tasks.demo.flaky", producer=producer, kwargs={
                            "project_id": "acme", "fail_times": 1, "key": key})
                    else:
                        app.send_task("tests.flow.hold", producer=producer, kwargs={
                            "project_id": "acme", "tag": tag, "ms": USER_TASK_MS})
        resume("celery")
        runs_key = f"k1:flaky:{key}:runs"
        wait_for(lambda: redis_client.llen(runs_key) == 2, timeout=180,
                 message="the retry never ran")
        first, second = (float(x) for x in redis_client.lrange(runs_key, 0, -1))
        before = sum(1 for start, *_ in runs(behind_tag) if start < second)
        print(f"retry due in ~1 s ran {second - first:.1f}s after the failure, after "
              f"{before} of the {queued_behind} tasks queued behind the failed run")
        assert before >= queued_behind * 0.9, f"the retry jumped the queue ({before} before)"
    finally:
        resume("celery")  # again, if sending failed
        redis_client.delete("celery")
