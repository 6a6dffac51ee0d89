"""A recording Socket.IO client for the real-time tests (python-socketio's ``Client``)."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import socketio

from k1.events import HISTORY, Publisher, emit, flush, make_event, publish
from k1.history.capture import record
from k1.history.stream import add
from k1.settings import get_settings
from tests.support import wait_for

MARKER_TASK = "k1.tests.marker"  # the task name of drain's markers
MARKER = "marker"  # what a Listener records them as


@dataclass(frozen=True)
class Received:
    name: str
    data: Any
    at: float  # time.time() when it arrived


class Listener:
    """Connects with a token and records every event it receives, in order.

        with Listener(web, token) as alice:
            alice.subscribe("acme")
            alice.wait_for(lambda e: e.name == "task_event" and e.data["type"] == "succeeded")
    """

    def __init__(self, url: str, token: str | None, *, headers: dict[str, str] | None = None,
                 transports: tuple[str, ...] = ("websocket",)) -> None:
        self.url, self.token, self.headers, self.transports = url, token, headers, transports
        self.client = socketio.Client(reconnection=False)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.client.on("*", self._record)

    def _record(self, name: str, *args: Any) -> None:
        data = args[0] if args else None
        if name == "task_event" and isinstance(data, dict) and data.get("task_name") == MARKER_TASK:
            name = MARKER  # drain's marker on the task path: no task's event
        with self.lock:
            self.received.append(Received(name, data, time.time()))

    def connect(self) -> Listener:
        auth = {"token": self.token} if self.token is not None else None
        self.client.connect(self.url, auth=auth, headers=self.headers or {},
                            transports=list(self.transports), wait_timeout=10)
        return self

    def __enter__(self) -> Listener:
        return self.connect()

    def __exit__(self, *_: object) -> None:
        self.client.disconnect()

    def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        return self.client.call(event, data, timeout=timeout)

    def subscribe(self, project_id: Any) -> Any:
        return self.call("subscribe", {"project_id": project_id})

    def events(self, predicate: Callable[[Received], bool] = lambda _: True) -> list[Received]:
        with self.lock:
            return [r for r in self.received if predicate(r)]

    def task_events(self, task_id: str) -> list[dict[str, Any]]:
        return [r.data for r in self.events(
            lambda r: r.name == "task_event" and isinstance(r.data, dict)
            and r.data.get("task_id") == task_id)]

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = 30,
                 what: str = "an event") -> Received:
        found = wait_for(lambda: self.events(predicate), timeout=timeout,
                         message=lambda: f"no {what}; received: {self.summary()}")
        return found[0]

    def summary(self) -> list[tuple[str, Any]]:
        return [(r.name, r.data.get("type") if isinstance(r.data, dict) else r.data)
                for r in self.events()][-30:]


def transition(type: str, *, redis_url: str | None = None, **fields: Any) -> dict[str, Any]:
    """Write a task transition as a worker does (its history record, sent before this
    returns), from which the web processes derive the ``task_event``; returns the event.
    ``redis_url``: through that Redis (a platform of the test's own)."""
    event = make_event(type, **fields)
    entry = [(HISTORY, record(event))]
    publisher = _publisher(redis_url) if redis_url is not None else None
    sent = publisher.publish(entry, wait=True) if publisher else publish(entry, wait=True)
    assert sent, f"the transition {event} could not be written"
    return event


def drain(*listeners: Listener, redis_url: str | None = None) -> str:
    """Return once everything this process published before the call has reached these
    listeners: a platform marker (every connection gets it) sent now arrives after it,
    because the web process relays in order. Events travel two ways, so the marker does
    too: a ``breaker_state`` on the Socket.IO channel and a task transition (of no project:
    to every connection; counted by no metric) on the history stream; it has arrived when
    both have. So
    "nothing arrived" is proven by the marker, not by a sleep. (For events of another
    process, call it once one of them has been seen arriving: the web process has then
    relayed everything before it.) ``redis_url``: the marker goes through that Redis (a
    platform of the test's own), sent before the call returns. Returns the marker's name
    (:func:`marker_index` finds it)."""
    marker = f"marker-{uuid.uuid4().hex}"
    if redis_url is None:
        emit("breaker_state", type="marker", name=marker)
    else:
        sent = _publisher(redis_url).publish(
            [("breaker_state", make_event("marker", name=marker))], wait=True)
        assert sent, f"the marker {marker} could not be published on {redis_url}"
    _stream_marker(marker, redis_url)
    for listener in listeners:
        for path in ("breaker_state", MARKER):
            listener.wait_for(lambda r, path=path: r.name == path and _is_marker(r, marker),
                              what=f"the marker {marker} ({path})")
    return marker


def _stream_marker(marker: str, redis_url: str | None) -> None:
    """The marker on the history stream, after everything this process buffered: written
    directly (``XADD``), not as a worker writes a transition, so that it counts toward no
    task metric (tests compare the counters around a marker)."""
    publisher = _publisher(redis_url) if redis_url is not None else None
    assert publisher.flush() if publisher else flush(), "the buffer could not be sent"
    client = redis.Redis.from_url(redis_url or get_settings().redis_url)
    try:
        pipe = client.pipeline()
        add(pipe, record(make_event("started", task_id=marker, task_name=MARKER_TASK)))
        pipe.execute()
    finally:
        client.close()


def marker_index(listener: Listener, marker: str) -> int:
    """Where ``marker`` is in what ``listener`` received (events before it: ``[:index]``):
    the later of its two copies."""
    received = listener.events()
    return max(i for i, r in enumerate(received) if _is_marker(r, marker))


def _is_marker(received: Received, marker: str) -> bool:
    data = received.data if isinstance(received.data, dict) else {}
    return ((received.name == "breaker_state" and data.get("name") == marker)
            or (received.name == MARKER and data.get("task_id") == marker))


@functools.cache
def _publisher(redis_url: str) -> Publisher:
    return Publisher(redis_url)
