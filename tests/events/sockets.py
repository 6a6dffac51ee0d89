"""A recording Socket.IO client for the real-time tests (python-socketio's ``Client``)."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import socketio

from k1.events import Publisher, emit, make_event
from tests.support import wait_for


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
        with self.lock:
            self.received.append(Received(name, args[0] if args else None, time.time()))

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


def drain(*listeners: Listener, redis_url: str | None = None) -> str:
    """Return once everything this process published before the call has reached these
    listeners: a platform marker (every connection gets it) sent now arrives after it,
    because the web process relays the channel in order. So "nothing arrived" is proven by
    the marker, not by a sleep. (For events of another process, call it once one of them
    has been seen arriving: the web process has then relayed everything before it.)
    ``redis_url``: the marker goes through that Redis (a platform of the test's own), sent
    before the call returns. Returns the marker's name (:func:`marker_index` finds it)."""
    marker = f"marker-{uuid.uuid4().hex}"
    if redis_url is None:
        emit("breaker_state", type="marker", name=marker)
    else:
        sent = _publisher(redis_url).publish(
            [("breaker_state", make_event("marker", name=marker))], wait=True)
        assert sent, f"the marker {marker} could not be published on {redis_url}"
    for listener in listeners:
        listener.wait_for(lambda r: _is_marker(r, marker), what=f"the marker {marker}")
    return marker


def marker_index(listener: Listener, marker: str) -> int:
    """Where ``marker`` is in what ``listener`` received (events before it: ``[:index]``)."""
    received = listener.events()
    return next(i for i, r in enumerate(received) if _is_marker(r, marker))


def _is_marker(received: Received, marker: str) -> bool:
    return (received.name == "breaker_state" and isinstance(received.data, dict)
            and received.data.get("name") == marker)


@functools.cache
def _publisher(redis_url: str) -> Publisher:
    return Publisher(redis_url)
