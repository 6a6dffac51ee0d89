"""The relay (k1/web/relay.py) against a real Redis: the task transitions on the history
stream become Socket.IO events, delivered in order, and a Redis restart loses none of
those written while the relay was away (it goes on after the last record it delivered).

The Socket.IO side is a stand-in that records what the relay hands it (delivery itself,
rooms and project scoping, is tested through the web process in test_realtime.py) and
whose ``sleep`` the test controls, so the restart happens while the relay waits.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

from k1.events import HISTORY, Publisher, make_event
from k1.history.capture import record
from k1.web import relay
from tests.support import RedisServer, wait_for


class _Manager:
    def __init__(self) -> None:
        self.delivered: list[tuple[str, str, list[str]]] = []

    def emit_here(self, name: str, data: dict[str, Any], room: list[str]) -> None:
        self.delivered.append((name, data["task_id"], room))


class _SocketIO:
    """What the relay uses of Flask-SocketIO: the manager, and ``sleep`` (its back-off
    while Redis is away), which waits until the test lets it go on."""

    def __init__(self) -> None:
        self.server = type("Server", (), {"manager": _Manager()})()
        self.waiting = threading.Event()  # the relay is in its back-off
        self.go_on = threading.Event()

    def sleep(self, _seconds: float) -> None:
        self.waiting.set()
        self.go_on.wait(60)


def test_transitions_are_relayed_in_order_and_none_is_lost_to_a_redis_restart(
        own_redis: RedisServer) -> None:
    publisher = Publisher(own_redis.url)

    def transition(type_: str, task_id: str) -> None:
        event = make_event(type_, task_id=task_id, project_id="acme")
        assert publisher.publish([(HISTORY, record(event))], wait=True)

    transition("started", "before-the-relay")  # older than the relay: not delivered
    client = redis.Redis.from_url(own_redis.url, socket_timeout=relay.BLOCK_MS / 1000 + 5)
    socketio = _SocketIO()
    manager = socketio.server.manager
    threading.Thread(target=relay.relay, args=(socketio, client, relay.newest_id(client)),
                     daemon=True).start()

    transition("started", "t1")
    transition("succeeded", "t1")
    assert publisher.publish([(HISTORY, record(make_event("submitted", task_id="t2")))],
                             wait=True)  # history only: no live event
    transition("started", "t2")
    wait_for(lambda: len(manager.delivered) >= 4, timeout=10,
             message=lambda: f"relayed: {manager.delivered}")
    assert manager.delivered == [
        ("task_event", "t1", ["project_acme"]), ("task_event", "t1", ["project_acme"]),
        ("task_completed", "t1", ["project_acme"]), ("task_event", "t2", ["project_acme"])]

    own_redis.stop()
    wait_for(socketio.waiting.is_set, timeout=2 * relay.BLOCK_MS / 1000 + 10,
             message="the relay never noticed that Redis was gone")
    own_redis.start()
    transition("succeeded", "t2")  # written before the relay reads again
    socketio.go_on.set()
    wait_for(lambda: len(manager.delivered) >= 6, timeout=30,
             message=lambda: f"relayed: {manager.delivered}")
    assert manager.delivered[4:] == [("task_event", "t2", ["project_acme"]),
                                      ("task_completed", "t2", ["project_acme"])]


def test_a_relay_started_while_redis_is_away_begins_at_the_newest_record_once_it_answers(
        own_redis: RedisServer) -> None:
    """A web process's first connection came while Redis was down: its relay waits for
    Redis, then delivers what comes after the newest record, never the stream's past."""
    publisher = Publisher(own_redis.url)
    assert publisher.publish([(HISTORY, record(make_event(
        "started", task_id="old", project_id="acme")))], wait=True)
    own_redis.stop()
    client = redis.Redis.from_url(own_redis.url, socket_timeout=relay.BLOCK_MS / 1000 + 5)
    socketio = _SocketIO()
    manager = socketio.server.manager
    threading.Thread(target=relay.relay, args=(socketio, client, None),
                     daemon=True).start()
    wait_for(socketio.waiting.is_set, timeout=30,
             message="the relay never waited for Redis")
    own_redis.start()
    socketio.go_on.set()
    sent: list[str] = []

    def delivered() -> bool:  # new transitions until the relay, now reading, gets one
        sent.append(f"new-{len(sent)}")
        event = make_event("started", task_id=sent[-1], project_id="acme")
        assert publisher.publish([(HISTORY, record(event))], wait=True)
        return bool(manager.delivered)

    wait_for(delivered, timeout=30, interval=0.2,
             message=lambda: f"nothing relayed after Redis came back: {manager.delivered}")
    assert all(task_id in sent for _, task_id, _ in manager.delivered), manager.delivered
