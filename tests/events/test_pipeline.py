"""Task transitions reach the right rooms, in order, through a real worker and web."""

from __future__ import annotations

import time

import pytest

from k1.events import PUBLISH_TIMEOUT, _Publisher, emit, make_event
from k1.settings import Settings
from tests.conftest import API
from tests.events.sockets import Listener
from tests.support import free_port

FLAKY = "k1.tasks.demo.flaky"


def _types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


def test_a_task_reaches_its_project_room_and_no_other(web, worker, make_token, unique):  # type: ignore[no-untyped-def]
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
        time.sleep(0.5)  # a stray event to B would have arrived with A's
        assert bob.task_events(task_id) == [] and cy.task_events(task_id) == []
        assert bob.events(lambda r: r.name.startswith("task")) == []


def test_events_of_a_task_arrive_in_order(web, worker, make_token, unique):  # type: ignore[no-untyped-def]
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
        time.sleep(0.3)
        for task_id in ids:
            events = alice.task_events(task_id)
            # user_ada and project_acme both match: one delivery per event all the same
            assert _types(events) == ["received", "started", "succeeded"], events
            assert [e["state"] for e in events] == ["RECEIVED", "STARTED", "SUCCESS"]
            assert all(e["task_name"] == FLAKY and e["project_id"] == "acme"
                       and e["user_id"] == f"ada-{unique}" and e["attempt"] == 1 for e in events)
            assert events[0]["ts"] <= events[1]["ts"] <= events[2]["ts"]


def test_a_retry_is_announced_before_its_next_attempt(web, worker, make_token, unique):  # type: ignore[no-untyped-def]
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


def test_a_permanent_failure_is_a_failed_event(web, worker, make_token, unique):  # type: ignore[no-untyped-def]
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


def test_platform_events_reach_every_connection(web, make_token, unique):  # type: ignore[no-untyped-def]
    with Listener(web, make_token(f"ada-{unique}", "acme")) as alice, \
            Listener(web, make_token(f"bob-{unique}", "beta")) as bob:
        emit("breaker_state", type="opened", name=f"test-{unique}", state="open")
        for who in (alice, bob):
            event = who.wait_for(lambda r: r.name == "breaker_state"
                                 and r.data.get("name") == f"test-{unique}").data
            assert event["type"] == "opened" and event["project_id"] is None


def test_publishing_to_an_absent_redis_neither_raises_nor_lingers() -> None:
    publisher = _Publisher(f"redis://127.0.0.1:{free_port()}/0", "k1-socketio")
    event = make_event("started", task_id="t1", project_id="acme")
    started = time.monotonic()
    assert publisher.publish([("task_event", event)]) is False
    first = time.monotonic() - started
    started = time.monotonic()
    assert publisher.publish([("task_event", event)]) is False  # paused: no new attempt
    second = time.monotonic() - started
    assert first < PUBLISH_TIMEOUT * 4 + 1  # generous: a loaded 2-core machine
    assert second < first + 0.05


def test_task_events_can_be_switched_off() -> None:
    env = {"K1_SECRET_KEY": "x" * 40}
    assert Settings.from_env(env).task_events is True
    assert Settings.from_env({**env, "K1_TASK_EVENTS": "off"}).task_events is False
    with pytest.raises(ValueError, match="K1_TASK_EVENTS"):
        Settings.from_env({**env, "K1_TASK_EVENTS": "maybe"})


def test_emit_refuses_unknown_event_names() -> None:
    with pytest.raises(ValueError, match="unknown event name"):
        emit("task_evnt", type="started")
