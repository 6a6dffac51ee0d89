"""What every answer carries, who may write how fast, revoked and sign-in tokens, and
503s while a dependency is down: against real web processes and servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
import socketio

from k1.web.security import HTML_CSP
from tests.conftest import API, PORTS, k1_process
from tests.events.sockets import Listener
from tests.support import Process, free_port, run_k1


def start_web(name: str, **env: str) -> tuple[Process, str]:
    """Another web process with ``env`` changed; ready once it serves its description
    (health may rightly say 503 here)."""
    port = free_port()
    process = k1_process(name, sys.executable, "-m", "k1.web",
                         env={"PORT": str(port), **env}).start()
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: requests.get(f"{url}/api/openapi.json", timeout=2).ok, 60,
                       "never served /api/openapi.json")
    return process, url


@pytest.mark.parametrize("path", ["/", "/api/health", "/api/openapi.json", "/api/dlq/stats",
                                  "/no-such-page", "/api/no-such-route",
                                  "/socket.io/?EIO=4&transport=polling"])
def test_every_answer_says_nosniff(web: str, path: str) -> None:
    response = requests.get(web + path, timeout=10)
    assert response.headers.get("X-Content-Type-Options") == "nosniff", response.headers
    assert response.headers.get("Referrer-Policy") == "no-referrer"


def test_html_always_has_a_content_security_policy(web: str) -> None:
    error_page = requests.get(f"{web}/no-such-page", timeout=10)
    assert error_page.status_code == 404 and error_page.headers["Content-Type"].startswith(
        "text/html")
    assert error_page.headers["Content-Security-Policy"] == HTML_CSP
    dashboard = requests.get(f"{web}/", timeout=10)  # keeps its own policy
    assert "script-src 'self'" in dashboard.headers["Content-Security-Policy"]


def test_no_cross_origin_access(web: str, make_token) -> None:
    evil = {"Origin": "https://evil.example", "Authorization": f"Bearer {make_token()}"}
    api = requests.get(f"{web}/api/dlq/stats", headers=evil, timeout=10)
    assert "Access-Control-Allow-Origin" not in api.headers
    sockets = requests.get(f"{web}/socket.io/?EIO=4&transport=polling", headers=evil,
                           timeout=10)
    assert sockets.status_code == 400 and "Access-Control-Allow-Origin" not in sockets.headers


def test_a_revoked_token_is_refused_on_rest_and_on_socket_connect(web: str, make_token,
                                                                  ) -> None:
    token = make_token("mallory", "acme")
    api = API(web, token)
    assert api.get("/api/dlq/stats").status_code == 200
    with Listener(web, token):
        pass  # connects while the token is good
    done = run_k1("token", "revoke", token)
    assert done.returncode == 0 and "revoked" in done.stdout, done.stderr
    refused = api.get("/api/dlq/stats")
    assert refused.status_code == 401 and refused.json()["detail"] == "token revoked"
    with pytest.raises(socketio.exceptions.ConnectionError):
        Listener(web, token).connect()
    other = make_token("mallory", "acme")  # a new token of the same user still works
    assert API(web, other).get("/api/dlq/stats").status_code == 200


def test_revoke_by_id(web: str, make_token) -> None:
    from k1.auth import decode_token
    from tests.conftest import SECRET_KEY

    token = make_token("mallory", "acme")
    token_id = decode_token(token, secret=SECRET_KEY).token_id
    done = run_k1("token", "revoke", "--id", token_id)
    assert done.returncode == 0, done.stderr
    assert API(web, token).get("/api/dlq/stats").json()["detail"] == "token revoked"
    assert "give the TOKEN or --id" in run_k1("token", "revoke").stderr


def test_the_signin_link_signs_in_once(web: str) -> None:
    done = run_k1("token", "signin-link", "--base-url", web)
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    assert link.startswith(f"{web}/#signin=")
    signin = urlsplit(link).fragment.removeprefix("signin=")
    # A sign-in token opens nothing but the exchange.
    assert API(web, signin).get("/api/dlq/stats").status_code == 401
    exchanged = API(web, signin).post("/api/auth/exchange")
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["expires_at"] > time.time() + 3600
    session = API(web, body["token"])
    assert session.get("/api/dlq/stats").status_code == 200
    assert session.post("/api/breakers/nope/reset").status_code == 404  # an operator
    again = API(web, signin).post("/api/auth/exchange")
    assert again.status_code == 401 and again.json()["detail"] == "sign-in link already used"
    # A session token cannot be exchanged for another one.
    assert API(web, body["token"]).post("/api/auth/exchange").status_code == 401


@pytest.fixture(scope="module")
def web_without_database(services) -> Iterator[str]:
    """A web process whose database is gone (a port nothing listens on) and whose writes
    are limited to 3 a minute."""
    dead = f"postgresql://k1@127.0.0.1:{free_port()}/k1"
    process, url = start_web("web-no-database", DATABASE_URL=dead,
                             K1_API_WRITE_LIMIT="3/minute")
    yield url
    process.stop()


def test_database_down_is_a_503_and_routes_without_it_keep_answering(
        web_without_database: str, make_token) -> None:
    api = API(web_without_database, make_token("ops", "*"))
    down = api.get("/api/dlq/stats")
    assert down.status_code == 503, down.text
    assert down.json()["error"] == "database unavailable"
    assert api.get("/api/breakers").status_code == 200
    assert api.get("/api/scheduler/jobs").status_code == 200


def test_writes_over_the_limit_get_429_with_retry_after(
        web_without_database: str, make_token) -> None:
    body = {"task": "k1.tasks.demo.flaky", "project_id": "acme"}
    ada = API(web_without_database, make_token("ada-limited", "acme"))
    statuses = [ada.post("/api/tasks", json=body).status_code for _ in range(3)]
    assert statuses == [202, 202, 202]
    over = ada.post("/api/tasks", json=body)
    assert over.status_code == 429, over.text
    assert over.json()["error"] == "too many requests"
    assert 0 < int(over.headers["Retry-After"]) <= 60
    # Another user has a budget of their own; reads are not limited.
    bob = API(web_without_database, make_token("bob-limited", "acme"))
    assert bob.post("/api/tasks", json=body).status_code == 202
    assert all(ada.get("/api/breakers").status_code == 200 for _ in range(5))


def test_redis_down_is_a_503_naming_it(services) -> None:
    from k1.auth import create_token
    from tests.conftest import SECRET_KEY

    dead = f"redis://127.0.0.1:{free_port()}/0"
    process, url = start_web("web-no-redis", REDIS_URL=dead)
    try:
        token = create_token("ops", ["*"], secret=SECRET_KEY, ttl=60)
        down = API(url, token).get("/api/dlq/stats")
        assert down.status_code == 503, down.text
        assert down.json()["error"] == "redis unavailable"
        assert requests.get(f"{url}/api/openapi.json", timeout=10).status_code == 200
    finally:
        process.stop()


def test_the_write_limit_setting_is_checked_at_start() -> None:
    env = {**os.environ, "K1_API_WRITE_LIMIT": "lots", "PORT": str(PORTS["web"])}
    done = subprocess.run([sys.executable, "-m", "k1.web"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "K1_API_WRITE_LIMIT: " in done.stderr
