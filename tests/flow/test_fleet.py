"""The fleet at a glance: GET /api/queues, GET /api/workers and their /metrics series, on
real queued messages and the two flow worker nodes."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import API, celery_worker
from tests.flow.conftest import TASKS, runs, send
from tests.flow.tasks import STARTED
from tests.support import wait_for

# Seconds after which a message's count may start to fall in the oldest, prorated bucket.
EXACT_RATES_WITHIN = 50


@pytest.fixture
def operator(web, make_token) -> API:
    return API(web, make_token("ops", "*"))


@pytest.fixture
def fresh_queue(redis_client) -> Iterator[str]:
    from k1.broker import DOORBELL, queue_lists

    name = f"test-fleet-{uuid.uuid4().hex[:8]}"
    yield name
    redis_client.delete(*queue_lists(name), DOORBELL.format(name))


def _queue(answer: dict, name: str) -> dict:
    found = [q for q in answer["queues"] if q["queue"] == name]
    assert found, f"queue {name} not listed: {[q['queue'] for q in answer['queues']]}"
    return found[0]


def _series(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    assert lines, f"no series {prefix.strip()} in /metrics"
    return float(lines[0].split()[-1])


def test_a_paused_queue_shows_its_depth_over_every_priority_and_its_oldest_message(
        operator, api, fresh_queue):
    from k1.celery import app

    assert operator.post(f"/api/queues/{fresh_queue}/pause").status_code == 200
    try:
        before = time.time()
        # The oldest in a priority list of its own: a depth or an age read from the
        # queue's main list alone would miss it.
        app.send_task("tests.flow.hold", kwargs={"project_id": "acme", "tag": "x"},
                      queue=fresh_queue, priority=9)
        time.sleep(1.0)  # the age itself is under test: the oldest must be a second older
        for priority in (0, 0, 5):
            app.send_task("tests.flow.hold", kwargs={"project_id": "acme", "tag": "x"},
                          queue=fresh_queue, priority=priority)
        asked = time.time()
        answer = api.get("/api/queues")
        answered = time.time()
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert fresh_queue in body["paused"] and body["rate_window_s"] == 60
        queue = _queue(body, fresh_queue)
        assert queue["depth"] == 4 and queue["paused"] is True, queue
        assert asked - before - 0.5 <= queue["oldest_age_s"] <= answered - before, queue
        assert queue["oldest_age_s"] >= 1.0, queue
        assert queue["enqueue_rate"] * 60 == pytest.approx(4, abs=0.01), queue
        assert queue["dequeue_rate"] == 0, queue

        metrics = operator.get("/metrics")
        assert metrics.status_code == 200, metrics.text
        label = f'queue="{fresh_queue}"'
        assert _series(metrics.text, "k1_queue_depth", label) == 4
        assert _series(metrics.text, "k1_queue_oldest_message_age_seconds", label) >= 1.0
        assert _series(metrics.text, "k1_queue_paused", label) == 1
        assert _series(metrics.text, "k1_queue_depth", 'queue="celery"') >= 0
    finally:
        assert operator.post(f"/api/queues/{fresh_queue}/resume").status_code == 200
    assert fresh_queue not in {q["queue"] for q in api.get("/api/queues").json()["queues"]}


def test_rates_move_and_workers_show_the_tasks_they_run_to_whom_may_see_them(
        flow_workers, operator, api, web, make_token, fresh_queue):
    from k1.celery import app

    app.control.add_consumer(fresh_queue, destination=["flow-a@k1test"], reply=True,
                             timeout=5)
    try:
        tag, long_tag = uuid.uuid4().hex, uuid.uuid4().hex
        sent_at = time.time()
        send("tests.flow.hold", 6, queue=fresh_queue, project_id="acme", tag=tag)
        [long_id] = send("tests.flow.hold", 1, queue=fresh_queue, project_id="acme",
                         tag=long_tag, ms=20_000)
        wait_for(lambda: len(runs(tag)) == 6, timeout=60,
                 message=lambda: f"{len(runs(tag))} of 6 quick runs")
        from k1.connections import get_redis
        wait_for(lambda: get_redis().lrange(STARTED.format(long_tag), 0, -1), timeout=30,
                 message="the long task never started")

        # Listed as consumed once the inspect (at most INSPECT_INTERVAL old) has seen it.
        listed = wait_for(lambda: [q for q in api.get("/api/queues").json()["queues"]
                                   if q["queue"] == fresh_queue], timeout=15,
                          message="the queue flow-a consumes is not listed")
        queue = listed[0]
        assert queue["depth"] == 0 and queue["paused"] is False, queue
        for rate in ("enqueue_rate", "dequeue_rate"):  # 7 in and out in the last minute
            assert 0 < queue[rate] * 60 <= 7.01, queue
            if time.time() - sent_at < EXACT_RATES_WITHIN:
                assert queue[rate] * 60 == pytest.approx(7, abs=0.01), queue

        def flow_a(answer: API) -> dict:
            workers = {w["hostname"]: w for w in answer.get("/api/workers").json()["workers"]}
            return workers.get("flow-a@k1test") or {}

        # The inspect is at most INSPECT_INTERVAL old, the heartbeat 2 s: the long task
        # and the counts show within them.
        seen = wait_for(lambda: (w := flow_a(operator)) and any(
            t["id"] == long_id for t in w["active"]) and w["processed"] >= 7
            and w["active_count"] >= 1 and w, timeout=20,
            message=lambda: f"flow-a does not list {long_id}: {flow_a(operator)}")
        assert seen["pool"] == "prefork" and seen["concurrency"] == 2, seen
        assert fresh_queue in seen["queues"] and "celery" in seen["queues"], seen
        assert 0 <= seen["heartbeat_age_s"] < 10, seen
        task = next(t for t in seen["active"] if t["id"] == long_id)
        assert set(task) == {"id", "name", "project_id", "queue", "started_at", "runtime_s",
                             "worker_pid"}, task  # never its arguments
        assert task["name"] == "tests.flow.hold" and task["project_id"] == "acme", task
        assert task["queue"] == fresh_queue and task["runtime_s"] > 0, task

        ours = flow_a(api)  # an acme token: its own project's task
        assert long_id in {t["id"] for t in ours["active"]}, ours
        theirs = flow_a(API(web, make_token("eve", "globex")))
        assert theirs["hostname"] == "flow-a@k1test" and theirs["pool"] == "prefork"
        assert long_id not in json.dumps(theirs), theirs
        assert all(t["project_id"] == "globex" for t in theirs["active"]), theirs
        app.control.revoke(long_id, terminate=True)
    finally:
        app.control.cancel_consumer(fresh_queue, destination=["flow-a@k1test"], reply=True,
                                    timeout=5)


class Broadcasts:
    """Counts the control broadcasts the workers receive (kombu's pidbox fanout, a Redis
    pub/sub channel), by command."""

    def __init__(self) -> None:
        from k1.connections import get_redis

        self.pubsub = get_redis().pubsub()
        self.pubsub.psubscribe("*celery.pidbox*")
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> Broadcasts:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.pubsub.punsubscribe()
        self.pubsub.close()

    def _listen(self) -> None:
        try:
            for message in self.pubsub.listen():
                if message["type"] == "pmessage":
                    self.seen.append(_method(message["data"]))
        except (redis.RedisError, ValueError, AttributeError):
            return  # closed

    def count(self, method: str) -> int:
        return self.seen.count(method)


def _method(data: str) -> str:
    payload = json.loads(data)
    body = payload["body"]
    if payload["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    return str(json.loads(body).get("method"))


def test_page_loads_share_one_inspect_per_interval(flow_workers, api, operator,
                                                   redis_client):
    from k1.celery import app
    from k1.flow import fleet

    with Broadcasts() as broadcasts:
        redis_client.delete(fleet.INSPECT_KEY, fleet.INSPECT_LOCK)
        first = api.get("/api/workers").json()
        second = operator.get("/api/workers").json()
        assert api.get("/api/queues").status_code == 200
        hosts = {w["hostname"] for w in second["workers"]}
        assert {"flow-a@k1test", "flow-b@k1test"} <= hosts, hosts
        # A marker after them: once it arrived, a broadcast they caused would have too.
        app.control.broadcast("ping", reply=False)
        wait_for(lambda: broadcasts.count("ping") >= 1, timeout=10,
                 message=lambda: f"the marker never arrived: {broadcasts.seen}")
        assert broadcasts.count(fleet.COMMAND) == 1, broadcasts.seen
        assert first["inspected_at"] == second["inspected_at"] is not None

        wait_for(lambda: not redis_client.exists(fleet.INSPECT_LOCK), timeout=10,
                 interval=0.2, message="the inspect lock never expired")
        third = api.get("/api/workers").json()
        assert third["inspected_at"] > second["inspected_at"]
        wait_for(lambda: broadcasts.count(fleet.COMMAND) == 2, timeout=10,
                 message=lambda: f"no second inspect once the interval passed: "
                                 f"{broadcasts.seen}")


def test_a_worker_leaves_the_list_when_it_stops_and_is_counted_while_online(
        services, operator):
    worker = celery_worker("fleet-x", concurrency=1, include=TASKS)
    try:
        wait_for(lambda: "fleet-x@k1test" in _hosts(operator), timeout=15,
                 message="the new worker's heartbeat never showed")
        online = _series(operator.get("/metrics").text, "k1_workers_online")
        assert online == len(_hosts(operator)) >= 1
    finally:
        worker.stop()
    # Its worker-offline removed it as it exited, not 4 s later when its heartbeat expires.
    assert "fleet-x@k1test" not in _hosts(operator)


def _hosts(api: API) -> set[str]:
    return {w["hostname"] for w in api.get("/api/workers").json()["workers"]}


def test_a_heartbeat_expires_after_twice_its_frequency_and_is_forgotten_an_hour_later(
        redis_client):
    from k1.events import heartbeats

    host, beat_at = f"gone-{uuid.uuid4().hex[:6]}@k1test", 1_000_000.0
    pipe = redis_client.pipeline()
    heartbeats.add(pipe, {"hostname": host, "ts": beat_at, "freq": 2.0, "active": 0,
                          "processed": 3, "pid": 1, "offline": False})
    pipe.execute()

    def listed(now: float) -> bool:
        return host in {b["hostname"] for b in heartbeats.online(redis_client, now)}

    assert listed(beat_at + 3.9)
    assert not listed(beat_at + 4.1)  # Celery's rule: expired after 2 x freq
    assert redis_client.hexists(heartbeats.HEARTBEATS_KEY, host)  # kept a while
    assert not listed(beat_at + 4 + heartbeats.FORGET_AFTER + 1)
    assert not redis_client.hexists(heartbeats.HEARTBEATS_KEY, host)  # forgotten
