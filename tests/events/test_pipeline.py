"""Task transitions reach the right rooms, in order, through a real worker and web."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid

import pytest
import socketio

from k1.events import PUBLISH_TIMEOUT, Publisher, emit, make_event, rooms_for
from k1.settings import Settings
from tests.conftest import API
from tests.events.sockets import Listener, drain
from tests.support import wait_for

FLAKY = "k1.tasks.demo.flaky"


def _types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_a_task_reaches_its_project_room_and_no_other(web, worker, make_token, unique):
    project_a, project_b = f"a-{unique}", f"b-{unique}"
    token_a = make_token(f"ada-{unique}", project_a)
    with Listener(web, token_a) as alice, \
            Listener(web, make_token(f"bob-{unique}", project_b)) as bob, \
            Listener(web, make_token(f"cy-{unique}", project_a, project_b)) as cy:
        assert alice.subscribe(project_a)["ok"] is True
        assert bob.subscribe(project_b)["ok"] is True
        assert cy.subscribe(project_b)["ok"] is True  # may see A, but did not ask to
        task_id = API(web, token_a).post(
            "/api/tasks", json={"task": FLAKY, "project_id": project_a}).json()["task_id"]
        alice.wait_for(lambda r: r.name == "task_completed" and r.data["task_id"] == task_id,
                       what="task_completed for A's task")
        completed = alice.events(lambda r: r.name == "task_completed")[0].data
        assert completed["project_id"] == project_a and completed["state"] == "SUCCESS"
        drain(bob, cy)  # a stray event of A's would have arrived before the marker
        assert bob.task_events(task_id) == [] and cy.task_events(task_id) == []
        assert bob.events(lambda r: r.name.startswith("task")) == []


def test_a_user_room_carries_only_the_projects_the_token_may_see(web, worker, make_token, unique):
    """bob@p1 and bob@p2 are two tokens of one user: both connections are in ``user_bob``,
    and each receives bob's events of its own project only."""
    bob, p1, p2 = f"bob-{unique}", f"p1-{unique}", f"p2-{unique}"
    with Listener(web, make_token(bob, p1)) as bob_p1, Listener(web, make_token(bob, p2)) as bob_p2:
        ids = {}
        for project in (p1, p2):
            ids[project] = API(web, make_token(bob, project)).post("/api/tasks", json={
                "task": FLAKY, "project_id": project, "kwargs": {"permanent": project == p2},
            }).json()["task_id"]
        bob_p1.wait_for(lambda r: r.name == "task_completed" and r.data["task_id"] == ids[p1],
                        what="p1's task_completed")
        bob_p2.wait_for(lambda r: r.name == "task_event" and r.data["task_id"] == ids[p2]
                        and r.data["type"] == "failed", what="p2's failed event")
        drain(bob_p1)  # anything of p2's on its way to bob@p1 would arrive before the marker
        assert _types(bob_p1.task_events(ids[p1])) == ["received", "started", "succeeded"]
        assert bob_p1.events(lambda r: isinstance(r.data, dict)
                             and r.data.get("project_id") == p2) == []
        assert bob_p2.task_events(ids[p1]) == [] and bob_p2.task_events(ids[p2])


def test_events_of_a_task_arrive_in_order(web, worker, make_token, unique):
    token = make_token(f"ada-{unique}", "acme")
    with Listener(web, token) as alice:
        alice.subscribe("acme")
        api = API(web, token)
        ids = [api.post("/api/tasks", json={"task": FLAKY, "project_id": "acme"}).json()["task_id"]
               for _ in range(5)]
        for task_id in ids:
            alice.wait_for(lambda r, t=task_id: r.name == "task_event"
                           and r.data["task_id"] == t and r.data["type"] == "succeeded",
                           what=f"succeeded for {task_id}")
        drain(alice)  # a duplicate or late event would have arrived before the marker
        for task_id in ids:
            events = alice.task_events(task_id)
            # user_ada and project_acme both match: one delivery per event all the same
            assert _types(events) == ["received", "started", "succeeded"], events
            assert [e["state"] for e in events] == ["RECEIVED", "STARTED", "SUCCESS"]
            assert all(e["task_name"] == FLAKY and e["project_id"] == "acme"
                       and e["user_id"] == f"ada-{unique}" and e["attempt"] == 1 for e in events)
            assert events[0]["ts"] <= events[1]["ts"] <= events[2]["ts"]


def test_a_retry_is_announced_before_its_next_attempt(web, worker, make_token, unique):
    token = make_token(f"ada-{unique}", "acme")
    with Listener(web, token) as alice:  # user room only: no subscribe needed
        task_id = API(web, token).post("/api/tasks", json={
            "task": FLAKY, "project_id": "acme", "kwargs": {"fail_times": 1}}).json()["task_id"]
        alice.wait_for(lambda r: r.name == "task_completed" and r.data["task_id"] == task_id,
                       what="task_completed after one retry")
        events = alice.task_events(task_id)
        assert _types(events) == ["received", "started", "retried", "received", "started",
                                  "succeeded"], events
        assert [e["attempt"] for e in events] == [1, 1, 1, 2, 2, 2]
        assert events[2]["exception"] == "TransientError" and events[2]["eta"]


def test_a_permanent_failure_is_a_failed_event(web, worker, make_token, unique):
    token = make_token(f"ada-{unique}", "acme")
    with Listener(web, token) as alice:
        task_id = API(web, token).post("/api/tasks", json={
            "task": FLAKY, "project_id": "acme", "kwargs": {"permanent": True}}).json()["task_id"]
        failed = alice.wait_for(lambda r: r.name == "task_event" and r.data["task_id"] == task_id
                                and r.data["type"] == "failed", what="failed event").data
        assert failed["state"] == "FAILURE" and failed["exception"] == "NonRetryableError"
        assert "permanent failure" in failed["message"]
        alice.wait_for(lambda r: r.name == "task_event" and r.data["task_id"] == task_id
                       and r.data["type"] == "dead", what="dead event (k1.recovery)")
        # K1Task.on_failure (dead letter, "dead") runs before Celery's task_failure
        types = _types(alice.task_events(task_id))
        assert types[:2] == ["received", "started"] and sorted(types[2:]) == ["dead", "failed"]


def test_platform_events_reach_every_connection(web, make_token, unique):
    with Listener(web, make_token(f"ada-{unique}", "acme")) as alice, \
            Listener(web, make_token(f"bob-{unique}", "beta")) as bob:
        emit("breaker_state", type="opened", name=f"test-{unique}", state="open")
        for who in (alice, bob):
            event = who.wait_for(lambda r: r.name == "breaker_state"
                                 and r.data.get("name") == f"test-{unique}").data
            assert event["type"] == "opened" and event["project_id"] is None


def test_a_failed_publish_pauses_publishing() -> None:
    """A Redis that accepts connections and never answers costs one PUBLISH_TIMEOUT, then
    nothing until the pause is over; then publishing is tried again."""
    with socket.socket() as silent:  # the kernel accepts connections; nobody answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        publisher = Publisher(url, pause_after_failure=3.0)
        event = [("workflow_event", make_event("started", workflow_id="w1", project_id="acme"))]

        def timed() -> float:
            started = time.monotonic()
            assert publisher.publish(event, wait=True) is False
            return time.monotonic() - started

        assert timed() >= PUBLISH_TIMEOUT * 0.9  # waited for the silent server, once
        assert publisher.paused_until > time.monotonic()
        assert timed() < PUBLISH_TIMEOUT / 2  # paused: no second wait
        wait_for(lambda: time.monotonic() >= publisher.paused_until, timeout=10,
                 message="the pause never ended")
        assert timed() >= PUBLISH_TIMEOUT * 0.9  # after the pause it tries again


def test_publishing_never_waits_for_redis_and_the_buffer_is_bounded() -> None:
    """The caller only buffers: with the flusher stuck on a silent Redis, publish returns
    at once; beyond ``max_buffered`` waiting events, new ones are dropped."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        publisher = Publisher(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", max_buffered=2)
        event = ("workflow_event", make_event("started", workflow_id="w1", project_id="acme"))
        started = time.monotonic()
        assert publisher.publish([event]) is True
        wait_for(lambda: not publisher.buffer, timeout=10, message="the flusher never took it")
        assert publisher.publish([event, event]) is True  # waiting: 2
        assert publisher.publish([event]) is False  # a third would exceed max_buffered
        assert time.monotonic() - started < PUBLISH_TIMEOUT  # nobody waited for Redis
        assert list(publisher.buffer) == [event, event]


def test_a_process_sends_its_buffer_when_it_exits(web, make_token, unique):
    with Listener(web, make_token(f"ada-{unique}", "acme")) as alice:
        assert alice.subscribe("acme")["ok"] is True
        subprocess.run([sys.executable, "-c", "from k1.events import make_event; "
                        "from k1.history.capture import capture, record; "
                        f"capture(record(make_event('started', task_id='exit-{unique}', "
                        "project_id='acme')))"], check=True, timeout=60)
        alice.wait_for(lambda r: r.name == "task_event" and r.data["task_id"] == f"exit-{unique}",
                       what="the event the process published as it exited")


def test_the_message_is_the_one_python_socketio_builds(redis_server) -> None:
    """K1's publisher and python-socketio's own write-only manager put the same message on
    the channel (but for the sender's host id)."""
    channel = f"wire-{uuid.uuid4().hex}"
    listener = redis_server.client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    event = make_event("started", workflow_id="w1", project_id="acme", user_id="ada")
    assert Publisher(redis_server.url, channel).publish([("workflow_event", event)], wait=True)
    socketio.RedisManager(redis_server.url, channel=channel, write_only=True).emit(
        "workflow_event", event, namespace="/", room=rooms_for(event))

    def next_message() -> dict:
        message = wait_for(lambda: listener.get_message(timeout=0.5), timeout=10,
                           message="nothing published")
        return json.loads(message["data"])

    ours, theirs = next_message(), next_message()
    listener.close()
    assert ours.pop("host_id") != theirs.pop("host_id")
    assert ours == theirs
    assert ours["room"] == ["project_acme", "user_ada"] and ours["data"] == [event]


def test_task_events_can_be_switched_off() -> None:
    env = {"K1_SECRET_KEY": "x" * 40}
    assert Settings.from_env(env).task_events is True
    assert Settings.from_env({**env, "K1_TASK_EVENTS": "off"}).task_events is False
    with pytest.raises(ValueError, match="K1_TASK_EVENTS"):
        Settings.from_env({**env, "K1_TASK_EVENTS": "maybe"})


def test_emit_refuses_unknown_event_names() -> None:
    with pytest.raises(ValueError, match="unknown event name"):
        emit("task_evnt", type="started")


def test_only_a_waiting_flusher_is_woken_and_a_lingering_one_takes_what_came(
        redis_server) -> None:
    """Waking the flusher thread cost a task more than the rest of its publish: entries
    published while it lingers are not a wake each, and still go out with the batch."""
    channel = f"wake-{uuid.uuid4().hex}"
    listener = redis_server.client().pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    publisher = Publisher(redis_server.url, channel, flush_linger=0.3)
    wakes: list[int] = []
    wake = publisher.wakeup.set
    publisher.wakeup.set = lambda: wakes.append(1) or wake()  # type: ignore[method-assign]

    def sent(count: int) -> list[str]:
        return [json.loads(wait_for(lambda: listener.get_message(timeout=0.5), timeout=10,
                                    message="an event was never sent")["data"])
                ["data"][0]["workflow_id"] for _ in range(count)]

    for n in range(5):
        publisher.publish([("workflow_event", make_event("started", workflow_id=f"w{n}"))])
    assert sent(5) == [f"w{n}" for n in range(5)]
    assert wakes == [], "a flusher starting or lingering was woken"

    wait_for(lambda: publisher.flusher_waiting, timeout=10, message="the flusher never waited")
    publisher.publish([("workflow_event", make_event("started", workflow_id="later"))])
    assert sent(1) == ["later"]
    assert wakes == [1]
    listener.close()
