"""Fair sharing between projects on the users' queue (fair by default, K1_FAIR_QUEUES):
with one project's backlog queued, another project's tasks start within seconds, on the
two flow worker nodes."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from k1.broker import sub_queue
from k1.headers import PROJECT
from tests.conftest import API
from tests.flow.conftest import runs, send, wait_runs
from tests.flow.tasks import STARTED
from tests.support import wait_for

FLOOD = 2_000  # project A's backlog
FLOOD_MS = 50  # each of A's tasks: the flood lasts 25 s at least on the 4 slots
OTHERS = 5  # project B's tasks, sent right after A's
PROMPT = 15.0  # seconds B's tasks may take to start, on a loaded 2-core machine
STILL_QUEUED = 0.5  # B's last task must start while more than this share of A's waits


def send_as(project: str, count: int, *, tag: str, ms: int = 0) -> list[str]:
    """Tasks of ``project`` as K1's send path stamps them (its header names the project)."""
    from k1.celery import app

    with app.producer_or_acquire() as producer:
        return [app.send_task("tests.flow.hold", kwargs={"project_id": project, "tag": tag,
                                                         "ms": ms},
                              headers={PROJECT: project}, producer=producer).id
                for _ in range(count)]


def purge_celery() -> int:
    """Drop what is still queued on ``celery`` (every project's sub-queue)."""
    from k1.celery import app

    with app.connection_for_write() as connection:
        return int(connection.default_channel.queue_purge("celery") or 0)


@pytest.fixture
def operator(web, make_token) -> API:
    return API(web, make_token("ops", "*"))


def test_a_flooding_project_does_not_delay_another_projects_tasks(flow_workers, redis_client):
    flood_tag, other_tag = uuid.uuid4().hex, uuid.uuid4().hex
    purged = 0
    try:
        send_as("flooder", FLOOD, tag=flood_tag, ms=FLOOD_MS)
        sent = time.time()
        send_as("patient", OTHERS, tag=other_tag)
        rows = wait_runs(other_tag, OTHERS, timeout=120)
        flood_started = redis_client.llen(STARTED.format(flood_tag))
        waits = sorted(start - sent for start, *_ in rows)
        print(f"B's {OTHERS} tasks started {waits[0]:.2f}-{waits[-1]:.2f}s after they were "
              f"sent, {FLOOD - flood_started} of A's {FLOOD} still queued")
        assert flood_started < FLOOD * (1 - STILL_QUEUED), (
            f"B waited behind the flood: {flood_started} of A's started first")
        assert waits[-1] < PROMPT, f"B's last task started {waits[-1]:.1f}s after it was sent"
    finally:
        purged = purge_celery()
        # What was fetched before the purge still runs: wait for it, so that the next
        # test starts on idle workers.
        wait_for(lambda: redis_client.llen(STARTED.format(flood_tag)) + purged >= FLOOD,
                 timeout=60, message="the flood's fetched tasks never ran")


def test_a_paused_fair_queue_counts_every_project_and_runs_each_task_once_on_resume(
        flow_workers, operator, api, redis_client):
    tag, marker = uuid.uuid4().hex, uuid.uuid4().hex
    paused = operator.post("/api/queues/celery/pause")
    assert paused.status_code == 200, paused.text
    try:
        before = _depth(api, "celery")
        first = send_as("p1", 3, tag=tag)
        ids = [*first, *send_as("p2", 2, tag=tag),
               *send("tests.flow.hold", 1, project_id="p3", tag=tag)]  # no header: no project
        # p1's in its own list, in the order sent (LPUSH: the oldest at the right end).
        queued = [json.loads(raw)["headers"]["id"]
                  for raw in redis_client.lrange(sub_queue("celery", "p1"), 0, -1)]
        assert queued[::-1] == first, queued
        # A marker on a queue that is not paused: once it ran, the paused tasks would have.
        send("tests.flow.hold", 1, queue="k1.platform", project_id="p1", tag=marker)
        wait_runs(marker, 1, timeout=60)
        assert runs(tag) == [], "a task of the paused queue ran"
        assert _depth(api, "celery") - before == 6, "depth misses a project's sub-queue"
    finally:
        resumed = operator.post("/api/queues/celery/resume")
    assert resumed.status_code == 200, resumed.text
    rows = wait_runs(tag, 6, timeout=120)
    assert sorted(task_id for *_, task_id in rows) == sorted(ids)  # each once, none lost


def _depth(api: API, queue: str) -> int:
    answer = api.get("/api/queues")
    assert answer.status_code == 200, answer.text
    return int(next(q["depth"] for q in answer.json()["queues"] if q["queue"] == queue))


def test_the_fair_queues_setting_defaults_to_the_users_queue_and_names_a_bad_one():
    from k1.settings import Settings, SettingsError

    env = {"K1_SECRET_KEY": "s" * 40}
    assert Settings.from_env(env).fair_queues == ("celery",)
    assert Settings.from_env({**env, "K1_FAIR_QUEUES": ""}).fair_queues == ()
    assert Settings.from_env({**env, "K1_FAIR_QUEUES": "celery, bulk,celery"}).fair_queues \
        == ("celery", "bulk")
    with pytest.raises(SettingsError, match="K1_FAIR_QUEUES: 'two words'"):
        Settings.from_env({**env, "K1_FAIR_QUEUES": "celery,two words"})
