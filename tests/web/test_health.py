"""GET /api/health reports each dependency, and a stopped Redis as down."""

from __future__ import annotations

import sys

import requests

from tests.conftest import LOGS, k1_process
from tests.support import RedisServer, free_port


def test_health_is_green_with_everything_up(web: str) -> None:
    response = requests.get(f"{web}/api/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["redis"]["status"] == "up" and body["database"]["status"] == "up"
    assert body["conductor"] == {"status": "not configured"}


def test_health_reports_a_stopped_redis_as_down(services, tmp_path) -> None:
    redis_server = RedisServer(free_port(), tmp_path / "redis", LOGS).start()
    port = free_port()
    web = k1_process("web-health", sys.executable, "-m", "k1.web",
                     env={"REDIS_URL": redis_server.url, "PORT": str(port)}).start()
    url = f"http://127.0.0.1:{port}/api/health"
    try:
        web.wait_until(lambda: requests.get(url, timeout=2).ok, 60, "health never answered 200")
        redis_server.stop()
        response = requests.get(url, timeout=10)
        assert response.status_code == 503
        body = response.json()
        assert body["ok"] is False
        assert body["redis"]["status"] == "down" and "Connection" in body["redis"]["error"]
        assert body["database"]["status"] == "up"
    finally:
        web.stop()
        redis_server.stop()
