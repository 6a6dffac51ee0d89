"""Retries, deaths and replays through real worker processes, Redis and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest

from k1.connections import get_redis
from k1.recovery.dlq.store import SPOOL_KEY
from tests.conftest import API, BASE, LOGS, celery_worker
from tests.events.sockets import Listener
from tests.recovery.conftest import letters_of, post_task, wait_letter, wait_task
from tests.support import PostgresServer, free_port, wait_for

pytestmark = pytest.mark.usefixtures("worker")
FLAKY = "k1.tasks.demo.flaky"


def test_transient_failures_retry_with_growing_jittered_countdowns(api: API, unique: str) -> None:
    task_id = post_task(api, FLAKY, retry={"attempts": 4, "initial": 0.5}, fail_times=3,
                        key=unique)
    done = wait_task(api, task_id, {"SUCCESS", "FAILURE"})
    assert done["state"] == "SUCCESS" and done["result"]["runs"] == 4
    runs = [float(t) for t in get_redis().lrange(f"k1:flaky:{unique}:runs", 0, -1)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(runs)]
    # waits of 0.5, 1 and 2 s, each +10-20 %; the upper bound allows for a busy machine.
    for gap, base in zip(gaps, (0.5, 1.0, 2.0), strict=True):
        assert base * 1.1 - 0.05 <= gap <= base * 1.2 + 1.5, (gaps, base)
    assert gaps[0] < gaps[1] < gaps[2]
    assert letters_of(task_id) == []


def test_non_transient_failure_dies_at_once_with_a_complete_letter(api: API) -> None:
    task_id = post_task(api, FLAKY, project_id="acme", permanent=True)
    letter = wait_letter(task_id)
    assert letter.attempts == 1 and letter.status == "dead"
    assert letter.task_name == FLAKY and letter.queue == "celery"
    assert letter.args == [] and letter.kwargs == {"permanent": True, "project_id": "acme"}
    assert letter.project_id == "acme" and letter.user_id == "ada"
    assert letter.exception_type == "NonRetryableError"
    assert "permanent failure for project acme" in letter.exception_message
    assert "NonRetryableError" in letter.traceback and "demo.py" in letter.traceback
    assert letter.first_failed_at <= letter.died_at
    assert letter.worker == "worker@k1test"
    assert isinstance(letter.breaker_states, dict)
    assert letter.idempotency_key == task_id
    assert letter.workflow_id is None and letter.replay_count == 0
    assert wait_task(api, task_id, {"FAILURE"})["error"]["type"] == "NonRetryableError"


def test_exhausted_retries_die_with_their_attempt_count(api: API, unique: str) -> None:
    task_id = post_task(api, FLAKY, retry={"initial": 0.2}, fail_times=5, key=unique)
    letter = wait_letter(task_id)
    assert letter.attempts == 3 and letter.exception_type == "TransientError"
    assert letter.first_failed_at < letter.died_at


def test_replay_runs_the_task_again_and_marks_the_letter(api: API, unique: str) -> None:
    task_id = post_task(api, FLAKY, retry={"attempts": 1}, fail_times=1, key=unique)
    letter = wait_letter(task_id)
    response = api.post(f"/api/dlq/{letter.id}/replay")
    assert response.status_code == 200, response.text
    replayed = response.json()
    assert replayed["status"] == "replayed" and replayed["replay_count"] == 1
    done = wait_task(api, replayed["replay_task_id"], {"SUCCESS", "FAILURE"})
    assert done["state"] == "SUCCESS"
    assert done["result"]["idempotency_key"] == task_id  # the key survives the replay
    shown = api.get(f"/api/dlq/{letter.id}").json()
    assert shown["status"] == "replayed" and shown["replay_task_id"] == replayed["replay_task_id"]

    again = api.post(f"/api/dlq/{letter.id}/replay")
    assert again.status_code == 409 and "replayed already" in again.json()["error"]
    forced = api.post(f"/api/dlq/{letter.id}/replay", json={"force": True})
    assert forced.status_code == 200 and forced.json()["replay_count"] == 2


def test_the_same_failure_delivered_twice_makes_one_row(web: str, make_token) -> None:
    from k1.tasks.demo import flaky

    task_id = str(uuid.uuid4())
    with Listener(web, make_token("ada", "acme")) as ada:
        assert ada.subscribe("acme")["ok"]

        def deaths() -> list[dict]:
            return [event for event in ada.task_events(task_id) if event["type"] == "dead"]

        for run in (1, 2):  # the same message again, as after a crash before the ack
            flaky.apply_async(kwargs={"project_id": "acme", "permanent": True}, task_id=task_id)
            # The "dead" event is sent after the letter is written: the run is over.
            wait_for(lambda run=run: len(deaths()) >= run, timeout=60,
                     message=lambda run=run: f"run {run} of {task_id} never died: {deaths()}")
    first, second = deaths()
    assert first["letter_id"] is not None
    assert second["letter_id"] is None  # the second write found the row and wrote nothing
    assert [letter.id for letter in letters_of(task_id)] == [first["letter_id"]]


@pytest.mark.slow
def test_a_database_outage_spools_letters_and_loses_none() -> None:
    """PostgreSQL stopped while tasks die: their letters spool in Redis; once it is back the
    drain writes each one once. The test's own PostgreSQL and worker (on a queue of its own),
    so that stopping it leaves the session's database alone.
    """
    from sqlalchemy import select

    from k1.db import make_engine
    from k1.db.migrate import upgrade
    from k1.recovery.dlq.models import DeadLetter
    from k1.recovery.dlq.tasks import drain_spool

    name = f"outage-{uuid.uuid4().hex[:8]}"
    server = PostgresServer(free_port(), BASE / name / "data", LOGS).start()
    upgrade(database_url=server.url)
    worker = celery_worker(name, concurrency=1, queues=name, env={"DATABASE_URL": server.url})
    engine = make_engine(server.url)

    def spooled() -> set[str]:
        return {json.loads(raw)["task_id"] for raw in get_redis().lrange(SPOOL_KEY, 0, -1)}

    def stored() -> list[DeadLetter]:
        with engine.connect() as connection:
            return list(connection.execute(select(DeadLetter).where(
                DeadLetter.task_id.in_(task_ids))))

    task_ids: list[str] = []
    try:
        server.stop()
        task_ids = [post_task(None, FLAKY, queue=name, permanent=True)
                    for _ in range(3)]
        wait_for(lambda: set(task_ids) <= spooled(), timeout=60,
                 message=lambda: f"letters of {task_ids} not spooled; spool: {spooled()}")
        server.start()
        assert stored() == []
        outcome = drain_spool.apply_async(queue=name).get(timeout=60)
        assert outcome["left"] == 0 and outcome["written"] >= 3 and outcome["quarantined"] == 0
        letters = stored()
        assert sorted(letter.task_id for letter in letters) == sorted(task_ids)
        assert {(letter.exception_type, letter.status, letter.queue) for letter in letters} == {
            ("NonRetryableError", "dead", name)}
    finally:
        worker.stop()
        engine.dispose()
        server.stop()


def test_a_death_the_database_would_refuse_is_stored_and_others_keep_flowing(api: API) -> None:
    """Through the real worker: a task dies with a NUL and 10 KB of text in its arguments;
    its letter is written repaired, not spooled, and the next death is written too."""
    hostile_key = "nul\x00" + "k" * 10_240
    hostile = post_task(api, FLAKY, permanent=True, key=hostile_key)
    good = post_task(api, FLAKY, permanent=True)
    letter, after = wait_letter(hostile), wait_letter(good)
    assert letter.kwargs["key"] == "nul\\x00" + "k" * 10_240
    assert letter.repairs == {"kwargs": {"changes": ["escaped"]}}
    assert after.repairs is None and after.status == "dead"
    spooled = [json.loads(raw)["task_id"] for raw in get_redis().lrange(SPOOL_KEY, 0, -1)]
    assert hostile not in spooled and good not in spooled
