"""History through a Redis outage: records are kept (bounded), never waited for, and sent
in order once Redis answers again, by the flusher or by a process that exits.

Each test runs its own Redis (stopped and started again), never the session's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from k1.events import HISTORY, PUBLISH_TIMEOUT, Publisher, make_event
from k1.history.capture import record
from k1.history.stream import RECORD_FIELD, STREAM_KEY
from tests.fault.platform import Platform
from tests.support import ROOT, VENV_BIN, RedisServer, free_port, wait_for

PAUSE = 2.0  # s: the test publisher's pause after a failure (5 s in production)
SLEEP_MS = 3000  # the first attempt's body: long enough to stop Redis while it runs


def stream_ids(server: RedisServer) -> list[str]:
    """The record ids on the history stream, oldest first."""
    client = server.client()
    try:
        return [json.loads(fields[RECORD_FIELD])["id"]
                for _entry, fields in client.xrange(STREAM_KEY)]
    finally:
        client.close()


def history_record(task_id: str, type: str = "started") -> tuple[str, dict[str, Any]]:
    return HISTORY, record(make_event(type, task_id=task_id, project_id="acme"))


def test_records_are_kept_through_an_outage_and_sent_in_order_after_it(
        own_redis: RedisServer) -> None:
    publisher = Publisher(own_redis.url, pause_after_failure=PAUSE)
    before = history_record("t1")
    assert publisher.publish([before], wait=True) is True

    own_redis.stop()
    failed = history_record("t2")
    event = ("workflow_event", make_event("started", workflow_id="w2", project_id="acme"))
    assert publisher.publish([event, failed], wait=True) is False  # Redis refused
    assert publisher.paused_until > time.monotonic()
    during = history_record("t2", "succeeded")
    started = time.monotonic()
    assert publisher.publish([during]) is True  # kept for after the pause
    assert publisher.publish([event]) is False  # an event is dropped, as before
    assert time.monotonic() - started < PUBLISH_TIMEOUT / 2  # nobody waited for Redis
    assert list(publisher.kept) == [failed, during]

    own_redis.start()
    # The flusher sends them by itself once the pause is over and Redis answers.
    expected = [entry[1]["id"] for entry in (before, failed, during)]
    wait_for(lambda: stream_ids(own_redis) == expected, timeout=30,
             message=lambda: f"stream holds {stream_ids(own_redis)}, expected {expected}")
    assert not publisher.kept and publisher.history_dropped == 0


def test_kept_records_are_bounded_and_the_oldest_dropped() -> None:
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # connections refused at once
    publisher = Publisher(nobody, pause_after_failure=60, max_kept_history=3)
    records = [history_record(f"t{i}") for i in range(5)]
    assert publisher.publish(records[:1], wait=True) is False
    for entry in records[1:]:
        publisher.publish([entry])
    assert list(publisher.kept) == records[2:]  # the newest three
    assert publisher.history_dropped == 2


EXITING = """
import sys
import k1.events
from k1.events import make_event
from k1.history.capture import capture, record

k1.events.EXIT_FLUSH_TIMEOUT = 60.0  # the test starts Redis again well within it
kept = record(make_event("succeeded", task_id=sys.argv[1], project_id="acme"))
assert capture(kept, wait=True) is False  # Redis is down: kept, not sent
print(kept["id"], flush=True)
"""


def test_a_process_that_exits_sends_what_it_kept_once_redis_is_back(
        own_redis: RedisServer) -> None:
    own_redis.stop()
    exiting = subprocess.Popen(
        [sys.executable, "-c", EXITING, f"exit-{uuid.uuid4().hex[:8]}"], cwd=ROOT,
        env={**os.environ, "REDIS_URL": own_redis.url}, stdout=subprocess.PIPE, text=True)
    assert exiting.stdout is not None
    record_id = exiting.stdout.readline().strip()  # captured and kept; now exiting
    assert record_id, "the process printed no record id"
    own_redis.start()
    assert exiting.wait(timeout=60) == 0
    assert record_id in stream_ids(own_redis)


def test_a_task_that_ran_through_a_redis_restart_has_its_whole_story_in_history(
        tmp_path: Path, services: dict[str, object], unique: str) -> None:
    """Attempt 1 of a flaky task ends (fails, to be retried) while Redis is down: its
    ``retried`` record meets the outage (the retry's publish and the result store wait for
    Redis; the record does not), and attempt 2 runs once Redis is back, often within the
    pause that failure began. History tells both runs and the final state (before the
    publisher kept records, run 1 stayed ``running``)."""
    from k1.history.store import get

    with Platform("history-outage", tmp_path, env={"K1_VISIBILITY_TIMEOUT": "60"}) as platform:
        worker = platform.worker("outage", concurrency=1)
        platform.process("recorder", str(VENV_BIN / "k1"), "history-recorder",
                         "--batch", "50", "--claim-idle", "2")
        key = f"outage-{unique}"
        assert platform.client is not None
        task_id = platform.client.send_task(
            "k1.tasks.demo.flaky",
            kwargs={"project_id": "outage", "key": key, "fail_times": 1,
                    "sleep_ms": SLEEP_MS},
            headers={"k1_project_id": "outage", "k1_idempotency_key": key,
                     "k1_retry": {"initial": 0.1}}).id
        client = platform.redis_client()
        wait_for(lambda: client.llen(f"k1:flaky:{key}:runs"), timeout=60,
                 message="attempt 1 never started")  # it now sleeps in its body
        logged = worker.log_path.stat().st_size
        platform.redis.stop()

        def failed_publish() -> bool:
            with worker.log_path.open(errors="replace") as log:
                log.seek(logged)
                return any("not published" in line and "retried" in line for line in log)

        worker.wait_until(failed_publish, 60, "never failed to publish attempt 1's retry")
        platform.redis.start()

        def story() -> list[tuple[int, str]] | None:
            found = get(task_id)
            if found is None or found[0].state != "SUCCESS":
                return None
            return [(run.attempt, run.outcome) for run in found[1]]

        def told() -> bool:
            runs = story() or []
            return (1, "retried") in runs and runs[-1] == (2, "succeeded")

        wait_for(told, timeout=120, interval=0.5,
                 message=lambda: f"history of {task_id}: {get(task_id)!r} runs {story()}")
