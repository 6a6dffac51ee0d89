"""The recorder killed mid-batch and the database stopped: no record lost, none twice."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from tests.conftest import API, BASE, LOGS
from tests.history.conftest import start_recorder
from tests.recovery.conftest import wait_task
from tests.support import PostgresServer, Process, free_port, wait_for

TASKS_PER_PHASE = 30
RECORDS_PER_TASK = 4  # submitted, received, started, succeeded


@pytest.fixture
def own_postgres(services: dict[str, object]) -> Iterator[tuple[PostgresServer, Engine, str]]:
    """A PostgreSQL of this test's own, migrated, that it may stop."""
    from k1.db import make_engine
    from k1.db.migrate import upgrade

    server = PostgresServer(free_port(), BASE / "history-pg" / "data", LOGS).start()
    url = server.url.replace("postgresql://", "postgresql+psycopg://")
    upgrade(database_url=url)
    engine = make_engine(url)
    yield server, engine, server.url
    engine.dispose()
    server.stop()


def submit(count: int) -> list[str]:
    """``count`` tasks through the API's own submit path (a burst the API's per-user write
    limit would refuse over HTTP)."""
    from k1.tasks.submissions import submit as submit_task

    return [submit_task("k1.tasks.demo.flaky", project_id="acme", user_id="ada")
            for _ in range(count)]


def recorded(engine: Engine, task_ids: list[str]) -> dict[str, Any]:
    from k1.history.models import TaskAttempt, TaskRecord, TaskRun

    with engine.connect() as connection:
        states = dict(connection.execute(select(TaskRun.task_id, TaskRun.state)
                                         .where(TaskRun.task_id.in_(task_ids))).all())
        records = dict(connection.execute(
            select(TaskRecord.task_id, func.count()).where(TaskRecord.task_id.in_(task_ids))
            .group_by(TaskRecord.task_id)).all())
        runs = connection.execute(select(TaskAttempt.task_id, TaskAttempt.attempt,
                                         TaskAttempt.outcome)
                                  .where(TaskAttempt.task_id.in_(task_ids))).all()
    return {"states": states, "records": records, "runs": runs}


def all_succeeded(engine: Engine, task_ids: list[str]) -> dict[str, Any] | None:
    seen = recorded(engine, task_ids)
    done = (len(seen["states"]) == len(task_ids)
            and set(seen["states"].values()) == {"SUCCESS"}
            and all(seen["records"].get(t) == RECORDS_PER_TASK for t in task_ids))
    return seen if done else None


def pending(client: Any) -> int:
    from k1.history.recorder import GROUP
    from k1.history.stream import STREAM_KEY

    return int(client.xpending(STREAM_KEY, GROUP)["pending"])


def test_recorder_killed_mid_batch_and_database_down_lose_and_duplicate_nothing(
        api: API, worker: Process, own_postgres: tuple[PostgresServer, Engine, str]) -> None:
    from k1.connections import get_redis

    server, engine, url = own_postgres
    env = {"DATABASE_URL": url}
    first = start_recorder("recorder-1", env=env)
    second: Process | None = None
    try:
        before = submit(TASKS_PER_PHASE)
        first.wait_until(lambda: all_succeeded(engine, before), 90, "did not record phase 1")

        server.stop()  # the database goes away while tasks keep running
        during = submit(TASKS_PER_PHASE)
        for task_id in during:
            wait_task(api, task_id, {"SUCCESS"})
        # The recorder holds a batch it cannot write: read, unacknowledged.
        first.wait_until(lambda: pending(get_redis()) > 0, 30, "holds no pending batch")
        first.kill()  # SIGKILL mid-batch: its records stay pending under a dead consumer

        second = start_recorder("recorder-2", env=env)
        second.wait_until(lambda: "not written" in second.log_tail(200), 60,
                          "never met the database outage")
        server.start()
        seen = second.wait_until(lambda: all_succeeded(engine, before + during), 120,
                                 "did not record every task once the database was back")
        wait_for(lambda: pending(get_redis()) == 0, timeout=30,
                 message="records left unacknowledged")
        # The dead recorder's batch was taken over, not read again as new.
        assert "claimed" in second.log_tail(1000)
    finally:
        first.kill()
        if second is not None:
            second.stop()
    assert sorted(seen["records"].values()) == [RECORDS_PER_TASK] * (2 * TASKS_PER_PHASE)
    by_task: dict[str, list[tuple[int, str]]] = {}
    for task_id, attempt, outcome in seen["runs"]:
        by_task.setdefault(task_id, []).append((attempt, outcome))
    assert by_task == {task_id: [(1, "succeeded")] for task_id in before + during}


def test_a_record_the_database_refuses_is_dropped_alone(services: dict[str, object],
                                                         unique: str) -> None:
    from k1.connections import get_redis
    from k1.history.recorder import Recorder
    from k1.history.store import get
    from k1.history.stream import RECORD_FIELD, STREAM_KEY, add

    def record(task_id: str, **fields: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "type": "received", "task_id": task_id,
                "ts": time.time(), "attempt": 1, "worker": "w@poison", **fields}

    client = get_redis()
    pipe = client.pipeline()
    add(pipe, record(f"{unique}-good-1"))
    add(pipe, record("x" * 300))  # longer than the task id column: refused
    pipe.xadd(STREAM_KEY, {RECORD_FIELD: "not json"})
    add(pipe, record(f"{unique}-good-2", ts="not a time", attempt="two"))
    pipe.execute()
    recorder = Recorder(client, name=f"test-{unique}")
    recorder.ensure_group()
    while recorder.step():
        pass
    assert get(f"{unique}-good-1") is not None
    row, runs = get(f"{unique}-good-2")
    assert row.state == "RECEIVED" and [run.attempt for run in runs] == [1]
    assert pending(client) == 0


def test_two_recorders_at_once_record_every_task_once(api: API, worker: Process) -> None:
    from k1.db import get_engine

    recorders = [start_recorder(f"recorder-{n}") for n in ("a", "b")]
    try:
        task_ids = submit(TASKS_PER_PHASE)
        seen = recorders[0].wait_until(lambda: all_succeeded(get_engine(), task_ids), 90,
                                       "the two recorders did not record every task")
        assert all(process.alive() for process in recorders)  # neither died of a deadlock
    finally:
        for process in recorders:
            process.stop()
    assert sorted((task_id, outcome) for task_id, _attempt, outcome in seen["runs"]) == sorted(
        (task_id, "succeeded") for task_id in task_ids)
