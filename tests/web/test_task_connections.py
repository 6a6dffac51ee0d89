"""The web process reuses its Redis connections for task results, and answers promptly
while Redis is down.

Under eventlet every request runs in its own green thread, and Celery keeps its result
backend per thread unless told otherwise: each request that read or sent a task used to
build a backend of its own, with its own connection pool (and, for a send, a pub/sub
connection subscribed to the task's result). Each platform here has its own Redis, so
``total_connections_received`` counts only what this web process opens.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from tests.fault.platform import Platform
from tests.support import free_port

pytestmark = pytest.mark.timeout(300)

REQUESTS = 50
# New connections 50 requests may open: the web process's pools grow to the few its
# background greenlets (Socket.IO's pub/sub, metrics) and one request at a time use.
CONNECTIONS_ALLOWED = 5
PROMPT_S = 5.0  # a 503 while Redis is down, not Celery's ~30 s of result-backend retries


def connections_received(platform: Platform) -> int:
    client = platform.redis_client()
    try:
        return int(client.info("stats")["total_connections_received"])
    finally:
        client.close()


class FreshConnections:
    """``requests`` calls with a bearer token, each on a new HTTP connection."""

    def __init__(self, token: str) -> None:
        self.headers = {"Authorization": f"Bearer {token}", "Connection": "close"}

    def get(self, url: str, **kwargs):
        return requests.get(url, headers=self.headers, **kwargs)

    def post(self, url: str, **kwargs):
        return requests.post(url, headers=self.headers, **kwargs)


class ResultCutter:
    """A TCP proxy in front of Redis that, once ``cut`` is set, drops every connection
    that asks for a task result: Redis lost in the middle of a request, after the
    request's first reads (the submission) succeeded."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port, self.port, self.cut = upstream_port, free_port(), False
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, asks: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if asks and self.cut and b"celery-task-meta-" in chunk:
                    break
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            sock.close()


@pytest.fixture
def platform(services, tmp_path):
    # 50 sends in a row: above the default per-user write limit of 50 a second.
    env = {"K1_API_WRITE_LIMIT": "1000/second"}
    with Platform("task-connections", tmp_path, env=env) as platform:
        yield platform


def test_sequential_task_reads_and_sends_reuse_redis_connections(
        platform: Platform, make_token) -> None:
    _, url = platform.web()
    # A connection per request, as behind a load balancer: eventlet serves each in a new
    # green thread (requests on one kept-alive connection share the same one).
    session = FreshConnections(make_token("ada", "acme"))

    def post() -> str:
        response = session.post(f"{url}/api/tasks", timeout=10, json={
            "task": "k1.tasks.demo.flaky", "project_id": "acme"})
        assert response.status_code == 202, response.text
        return response.json()["task_id"]

    task_id = post()  # the first request of each kind warms the process's pools up
    assert session.get(f"{url}/api/tasks/{task_id}", timeout=10).status_code == 200

    before = connections_received(platform)
    for _ in range(REQUESTS):
        response = session.get(f"{url}/api/tasks/{task_id}", timeout=10)
        assert response.status_code == 200, response.text
    reads = connections_received(platform) - before - 1  # our own INFO connection
    assert reads <= CONNECTIONS_ALLOWED, f"{REQUESTS} GET /api/tasks/<id> opened {reads}"

    before = connections_received(platform)
    for _ in range(REQUESTS):
        post()
    sends = connections_received(platform) - before - 1
    assert sends <= CONNECTIONS_ALLOWED, f"{REQUESTS} POST /api/tasks opened {sends}"
    # Nor does the web process subscribe to the result of each task it sends (Celery's
    # default, for result.get(); unsubscribed again when the AsyncResult is collected).
    client = platform.redis_client()
    subscribes = client.info("commandstats").get("cmdstat_subscribe", {}).get("calls", 0)
    client.close()
    assert subscribes == 0, f"{subscribes} SUBSCRIBE to task results"


def test_a_task_read_answers_503_promptly_when_redis_drops_the_result_read(
        platform: Platform, make_token) -> None:
    cutter = ResultCutter(platform.redis.port)
    url_before = platform.env["REDIS_URL"]
    platform.env["REDIS_URL"] = f"redis://127.0.0.1:{cutter.port}/0"
    try:
        _, url = platform.web()
    finally:
        platform.env["REDIS_URL"] = url_before
    headers = {"Authorization": f"Bearer {make_token('ada', 'acme')}"}
    task_id = requests.post(f"{url}/api/tasks", headers=headers, timeout=10, json={
        "task": "k1.tasks.demo.flaky", "project_id": "acme"}).json()["task_id"]
    assert requests.get(f"{url}/api/tasks/{task_id}", headers=headers, timeout=10).ok

    cutter.cut = True
    started = time.monotonic()
    response = requests.get(f"{url}/api/tasks/{task_id}", headers=headers, timeout=120)
    took = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "redis unavailable", response.text
    assert took < PROMPT_S, f"the result read took {took:.1f} s to answer 503"


def test_a_task_read_answers_503_promptly_while_redis_is_down(
        platform: Platform, make_token) -> None:
    _, url = platform.web()
    headers = {"Authorization": f"Bearer {make_token('ada', 'acme')}"}
    task_id = requests.post(f"{url}/api/tasks", headers=headers, timeout=10, json={
        "task": "k1.tasks.demo.flaky", "project_id": "acme"}).json()["task_id"]
    assert requests.get(f"{url}/api/tasks/{task_id}", headers=headers, timeout=10).ok

    platform.redis.stop()
    for path in (f"/api/tasks/{task_id}", "/api/tasks"):
        started = time.monotonic()
        if path == "/api/tasks":
            response = requests.post(f"{url}{path}", headers=headers, timeout=60, json={
                "task": "k1.tasks.demo.flaky", "project_id": "acme"})
        else:
            response = requests.get(f"{url}{path}", headers=headers, timeout=60)
        took = time.monotonic() - started
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert response.json()["error"] == "redis unavailable", response.text
        assert took < PROMPT_S, f"{path} took {took:.1f} s to answer 503 with Redis down"
