"""The web process killed and started again: dashboard clients reconnect by themselves,
subscribe again, and receive the events of tasks that run after the restart.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import socketio

from tests.fault.platform import Load, Outcome, Platform, report
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

CLIENTS = 20


class Dashboard:
    """What the dashboard does on every (re)connection: subscribe to its project."""

    def __init__(self, url: str, token: str, project: str) -> None:
        self.client = socketio.Client(reconnection=True, reconnection_delay=0.5,
                                      reconnection_delay_max=2)
        self.url, self.token, self.project = url, token, project
        self.subscriptions = 0
        self.task_ids: set[str] = set()
        self.lock = threading.Lock()
        self.client.on("connect", self._subscribe)
        self.client.on("task_event", self._event)

    def _subscribe(self) -> None:
        self.client.start_background_task(self._do_subscribe)

    def _do_subscribe(self) -> None:
        answer = self.client.call("subscribe", {"project_id": self.project}, timeout=10)
        if answer and answer.get("ok"):
            with self.lock:
                self.subscriptions += 1

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "succeeded":
            with self.lock:
                self.task_ids.add(event["task_id"])

    def connect(self) -> Dashboard:
        self.client.connect(self.url, auth={"token": self.token}, transports=["websocket"],
                            wait_timeout=20)
        return self


def test_clients_reconnect_resubscribe_and_resume_after_a_web_restart(
        services, tmp_path, make_token) -> None:
    port = free_port()
    with Platform("web-restart", tmp_path) as platform:
        platform.worker("events", concurrency=2)
        web, url = platform.web("web-1", port=port)
        dashboards = [Dashboard(url, make_token(f"user{i}", "fault"), "fault").connect()
                      for i in range(CLIENTS)]
        try:
            wait_for(lambda: all(d.subscriptions == 1 for d in dashboards), timeout=60,
                     message="not every client subscribed")
            before = Load(platform, "fault", 20)
            sent = set(before.send())
            wait_for(lambda: all(sent <= d.task_ids for d in dashboards), timeout=60,
                     message="the clients missed events before the restart")

            web.kill()
            killed = time.monotonic()
            platform.web("web-2", port=port)
            wait_for(lambda: all(d.subscriptions == 2 for d in dashboards), timeout=120,
                     message=lambda: "resubscribed: "
                     f"{sum(d.subscriptions == 2 for d in dashboards)} of {CLIENTS}")
            resubscribed = time.monotonic()
            after = Load(platform, "fault", 50)
            fresh = set(after.send())
            wait_for(lambda: all(fresh <= d.task_ids for d in dashboards), timeout=120,
                     message=lambda: "clients with every fresh event: "
                     f"{sum(fresh <= d.task_ids for d in dashboards)} of {CLIENTS}")
            resumed = time.monotonic()
            outcome = report(Outcome(
                scenario="web-restart", load=f"{CLIENTS} Socket.IO clients (WebSocket) "
                "subscribed to one project; 20 tasks before, 50 after",
                fault="the web process SIGKILLed and started again on the same port",
                sent=50, completed=min(len(fresh & d.task_ids) for d in dashboards),
                lost=max(len(fresh - d.task_ids) for d in dashboards), dead=0,
                duplicated_effects=None, recovery_s=round(resubscribed - killed, 2),
                extra={"events_flowing_again_s": round(resumed - killed, 2)}))
            assert outcome.lost == 0
        finally:
            for dashboard in dashboards:
                dashboard.client.disconnect()
