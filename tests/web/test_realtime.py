"""Socket.IO against the real web process: who may connect, rooms, hostile payloads,
and a stalled database that must not stall the event loop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
import socketio
import websocket

from k1.auth import revoke, verify_token
from k1.web.app import SOCKET_TIMEOUT
from k1.web.realtime import REVOCATION_CHECK_INTERVAL
from tests.conftest import SECRET_KEY, k1_process
from tests.events.sockets import Listener, drain, transition
from tests.support import free_port, wait_for


def _expired_token() -> str:
    now = int(time.time())
    claims = {"sub": "ada", "projects": ["acme"], "iat": now - 7200, "exp": now - 3600,
              "iss": "k1"}
    return jwt.encode(claims, SECRET_KEY, algorithm="HS256")


def _forged_token() -> str:
    now = int(time.time())
    claims = {"sub": "ada", "projects": ["*"], "iat": now, "exp": now + 600, "iss": "k1"}
    return jwt.encode(claims, "not-the-secret-" + "x" * 40, algorithm="HS256")


@pytest.mark.parametrize("token", [None, "", "garbage", "expired", "forged"])
def test_a_connection_without_a_valid_token_is_refused(web, token):
    token = {"expired": _expired_token(), "forged": _forged_token()}.get(token, token)
    listener = Listener(web, token)
    with pytest.raises(socketio.exceptions.ConnectionError):
        listener.connect()
    assert not listener.client.connected


def test_every_connection_joins_its_user_room(web, make_token, unique):
    with Listener(web, make_token(f"ada-{unique}", "acme")) as alice, \
            Listener(web, make_token(f"bob-{unique}", "acme")) as bob:
        transition("started", task_id=f"t-{unique}", user_id=f"ada-{unique}")
        alice.wait_for(lambda r: r.name == "task_event" and r.data["task_id"] == f"t-{unique}")
        drain(bob)
        assert bob.task_events(f"t-{unique}") == []


def test_subscribing_to_a_foreign_project_is_refused_with_an_error_event(web, make_token):
    with Listener(web, make_token("ada", "acme")) as alice:
        answer = alice.subscribe("globex")
        assert answer["ok"] is False and "globex" in answer["error"]
        error = alice.wait_for(lambda r: r.name == "error", what="error event").data
        assert error["action"] == "subscribe" and error["project_id"] == "globex"
        transition("started", task_id="foreign-1", project_id="globex")
        assert alice.subscribe("acme")["ok"] is True
        drain(alice)
        assert alice.task_events("foreign-1") == []


def test_an_operator_token_may_subscribe_to_any_project(web, make_token):
    with Listener(web, make_token("root", "*")) as operator:
        assert operator.subscribe("anything")["ok"] is True
        assert operator.call("unsubscribe", {"project_id": "anything"})["ok"] is True


@pytest.mark.parametrize("payload", [
    None, "acme", 42, ["acme"], {"project_id": None}, {"project_id": ""},
    {"project_id": True}, {"project_id": {"$ne": ""}}, {"project_id": ["acme"]}, {},
])
def test_malformed_subscribe_payloads_get_an_error_not_a_crash(web, make_token, payload):
    with Listener(web, make_token("ada", "acme")) as alice:
        answer = alice.call("subscribe", payload)
        assert answer["ok"] is False and answer["error"]
        alice.wait_for(lambda r: r.name == "error")
        assert alice.subscribe("acme")["ok"] is True  # the connection still works


def test_malformed_latency_reports_are_refused(web, make_token):
    with Listener(web, make_token("ada", "acme")) as alice:
        for payload in (None, "fast", {"samples": "1,2"}, {"samples": {"a": 1}}):
            assert alice.call("latency", payload)["ok"] is False
        answer = alice.call("latency", {"samples": ["x", None, -1, float("inf"), 10**12, True]})
        assert answer == {"ok": True, "action": "latency", "recorded": 0}


def test_an_oversized_message_is_refused_and_the_server_carries_on(web, make_token):
    token = make_token("ada", "acme")
    big = Listener(web, token)
    dropped = threading.Event()
    big.client.on("disconnect", lambda *_: dropped.set())
    big.connect()
    big.client.emit("subscribe", {"project_id": "x" * (1024 * 1024)})
    # the server drops the connection rather than read a megabyte
    assert dropped.wait(timeout=20), "the server kept a connection that sent a megabyte"
    assert big.events(lambda r: r.name == "error") == []  # dropped unread, not parsed
    with Listener(web, token) as alice:
        assert alice.subscribe("acme")["ok"] is True
    assert requests.get(f"{web}/api/health", timeout=10).status_code == 200


def _raw_socket(web: str, token: str) -> tuple[websocket.WebSocket, dict]:
    ws = websocket.create_connection(
        web.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket", timeout=10)
    opened = ws.recv()
    assert opened.startswith("0")
    ws.send("40" + json.dumps({"token": token}))
    assert ws.recv().startswith("40{")
    return ws, json.loads(opened[1:])


def test_the_handshake_announces_the_heartbeat_and_payload_limit(web, make_token):
    ws, handshake = _raw_socket(web, make_token("ada", "acme"))
    ws.close()
    assert handshake["pingInterval"] == 25_000
    assert handshake["pingTimeout"] == 20_000
    assert handshake["maxPayload"] == 64 * 1024


# Two subscribes with acks (ids 1 and 2): a pending binary placeholder takes the first as
# its attachment, so the second is the one answered then.
READ_MARKERS = ('421["subscribe",{"project_id":"acme"}]', '422["subscribe",{"project_id":"acme"}]')


def _until_read(ws: websocket.WebSocket, sent: object) -> None:
    """Return once the server has read what was sent before: it reads a connection's
    packets in order, so it answers a marker sent now after them, or it has hung up."""
    try:
        for marker in READ_MARKERS:
            ws.send(marker)
        while (packet := ws.recv()) != "":  # "": the server's close frame
            if isinstance(packet, str) and packet[:3] in ("431", "432"):
                return
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return  # the server may hang up on garbage: that is fine
    except websocket.WebSocketTimeoutException:
        raise AssertionError(f"the server neither answered nor hung up after {sent!r}") from None


def test_garbage_packets_do_not_hurt_the_server(web, make_token):
    token = make_token("ada", "acme")
    for packet in ['42[', '42{}', '42["subscribe"', '4', '9', '42[1,2,3]', '42["nope"]',
                   '451-["subscribe",{"_placeholder":true,"num":0}]', '43', '2probe' * 1000,
                   b"\x00\xff\xfe", '42["subscribe",' + '['*5000 + ']'*5000 + ']']:
        ws, _ = _raw_socket(web, token)
        try:
            (ws.send_binary if isinstance(packet, bytes) else ws.send)(packet)
            _until_read(ws, packet)
        finally:
            ws.close()
    with Listener(web, token) as alice:
        assert alice.subscribe("acme")["ok"] is True
    assert requests.get(f"{web}/api/health", timeout=10).status_code == 200


def test_other_origins_are_refused(web, make_token):
    token = make_token("ada", "acme")
    # long-polling: the Origin header goes out exactly as given (websocket-client adds its own)
    with pytest.raises(socketio.exceptions.ConnectionError):
        Listener(web, token, headers={"Origin": "http://evil.example"},
                 transports=("polling",)).connect()
    with Listener(web, token, headers={"Origin": web}, transports=("polling",)) as same_origin:
        assert same_origin.subscribe("acme")["ok"] is True
    handshake = requests.get(f"{web}/socket.io/?EIO=4&transport=polling",
                             headers={"Origin": "http://evil.example"}, timeout=10)
    assert handshake.status_code == 400
    assert "Access-Control-Allow-Origin" not in handshake.headers


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def test_a_stalled_database_does_not_stall_socket_events(web, postgres, make_token, unique):
    """psycopg 3 blocks whatever thread runs it. The web process runs its queries in
    eventlet's thread pool (k1.web.offload.blocking), so while /api/health waits on a
    frozen PostgreSQL, Socket.IO still relays events and answers calls."""
    assert requests.get(f"{web}/api/health", timeout=10).json()["database"]["status"] == "up"
    postmaster = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
    cluster = _descendants(postmaster)  # backends run in sessions of their own
    with Listener(web, make_token("ada", "acme")) as alice, \
            ThreadPoolExecutor(1) as pool:
        assert alice.subscribe("acme")["ok"] is True
        _signal_all(cluster, signal.SIGSTOP)
        try:
            health = pool.submit(requests.get, f"{web}/api/health", timeout=120)
            time.sleep(1.5)  # the health check is now stuck in PostgreSQL
            assert not health.done(), "health answered although PostgreSQL was frozen"
            for n in range(5):
                transition("started", task_id=f"stall-{unique}-{n}",
                     project_id="acme", state="STARTED")
                alice.wait_for(lambda r, n=n: r.name == "task_event"
                               and r.data["task_id"] == f"stall-{unique}-{n}", timeout=15,
                               what="an event while the database is frozen")
            assert alice.call("clock")["now_ms"] > 0
            assert not health.done(), "the database call finished early: nothing was proven"
        finally:
            _signal_all(cluster, signal.SIGCONT)
        assert health.result(timeout=120).status_code in (200, 503)
    assert requests.get(f"{web}/api/health", timeout=30).status_code == 200


def test_a_connection_is_dropped_when_its_token_expires(web, make_token, unique):
    short = make_token(f"ada-{unique}", "acme", ttl=3)
    expires_at = jwt.decode(short, options={"verify_signature": False})["exp"]
    with Listener(web, make_token(f"bob-{unique}", "acme")) as bob:
        brief = Listener(web, short).connect()
        assert brief.subscribe("acme")["ok"] is True
        error = brief.wait_for(lambda r: r.name == "error", timeout=30,
                               what="an error event at expiry").data
        dropped_at = time.time()
        assert error["action"] == "connection" and "expired" in error["error"]
        wait_for(lambda: not brief.client.connected, timeout=15,
                 message="still connected after its token expired")
        assert dropped_at >= expires_at - 0.05  # at expiry, not before
        # The server dropped it: nothing of acme reaches it any more, and bob stays.
        assert bob.subscribe("acme")["ok"] is True


def test_a_revoked_tokens_connections_are_dropped(web, make_token, unique):
    token = make_token(f"ada-{unique}", "acme")
    with Listener(web, make_token(f"bob-{unique}", "acme")) as bob:
        ada = Listener(web, token).connect()
        assert ada.subscribe("acme")["ok"] is True
        principal = verify_token(token, secret=SECRET_KEY)
        assert revoke(principal.token_id, principal.expires_at)
        revoked_at = time.monotonic()
        error = ada.wait_for(lambda r: r.name == "error", timeout=30,
                             what="an error event after revocation").data
        assert error["action"] == "connection" and "revoked" in error["error"]
        wait_for(lambda: not ada.client.connected, timeout=15,
                 message="still connected after its token was revoked")
        assert time.monotonic() - revoked_at < REVOCATION_CHECK_INTERVAL + 10
        assert bob.subscribe("acme")["ok"] is True  # another token's connection stays


def test_an_oversized_polling_post_is_answered_413_at_once(web):
    session = requests.Session()
    opened = session.get(f"{web}/socket.io/?EIO=4&transport=polling", timeout=10)
    sid = json.loads(opened.text[1:])["sid"]
    started = time.monotonic()
    response = session.post(f"{web}/socket.io/?EIO=4&transport=polling&sid={sid}",
                            data="4" + "x" * 70_000, timeout=20)
    assert response.status_code == 413, response.text
    assert time.monotonic() - started < 10  # answered, not timed out
    assert response.json()["error"] == "payload too large"
    assert requests.get(f"{web}/api/health", timeout=10).status_code == 200


def test_a_silent_client_is_cut_off_and_an_idle_socket_is_not(web, make_token):
    """A client that stops in the middle of its request headers is disconnected after
    SOCKET_TIMEOUT; a Socket.IO WebSocket that stays idle as long is not."""
    with Listener(web, make_token("ada", "acme")) as alice, \
            socket.create_connection(("127.0.0.1", int(web.rsplit(":", 1)[1])), timeout=10) as slow:
        slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: k1\r\n")  # and never the rest
        slow.settimeout(SOCKET_TIMEOUT + 30)
        started = time.monotonic()
        slow.recv(1024)  # returns when the server closes the socket (b"" or a 4xx)
        waited = time.monotonic() - started
        assert SOCKET_TIMEOUT * 0.8 <= waited < SOCKET_TIMEOUT + 30, waited
        assert alice.subscribe("acme")["ok"] is True  # idle as long, still connected


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_drops_sockets_answers_requests_in_flight_and_exits(services, make_token):
    """A web process sent SIGTERM drops its Socket.IO connections as a lost transport (the
    clients reconnect, to another web process), refuses new connections, answers the
    request it is in the middle of (here one stuck in a frozen PostgreSQL) and exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    web = k1_process(f"web-sigterm-{port}", sys.executable, "-m", "k1.web",
                     env={"PORT": str(port)}).start()
    reasons: list[str] = []
    client = socketio.Client(reconnection=True, reconnection_delay=60)  # one reason to see
    client.on("disconnect", lambda reason=None: reasons.append(reason))
    try:
        web.wait_until(lambda: requests.get(f"{url}/api/health", timeout=2).ok, 60,
                       "health never answered 200")
        client.connect(url, auth={"token": make_token("ada", "acme")},
                       transports=["websocket"], wait_timeout=10)
        # after the web process connected: its backends are the postmaster's children
        postmaster = services["postgres"].data_dir / "postmaster.pid"
        cluster = _descendants(int(postmaster.read_text().split()[0]))
        with ThreadPoolExecutor(1) as pool:
            _signal_all(cluster, signal.SIGSTOP)
            try:
                health = pool.submit(requests.get, f"{url}/api/health", timeout=60)
                time.sleep(1.5)  # the health check is now stuck in PostgreSQL
                assert not health.done(), "health answered although PostgreSQL was frozen"
                os.kill(web.pid, signal.SIGTERM)
                wait_for(lambda: reasons, timeout=15, message="the socket was not dropped")
                assert reasons[0] != socketio.Client.reason.SERVER_DISCONNECT  # will reconnect
                wait_for(lambda: _refused(port), timeout=15, message="still accepting connections")
                assert web.alive() and not health.done(), "the request in flight was cut"
            finally:
                _signal_all(cluster, signal.SIGCONT)
            assert health.result(timeout=60).status_code in (200, 503)
        assert web.popen.wait(timeout=30) == 0
    finally:
        client.disconnect()
        web.stop()


def test_a_revoked_task_is_announced_failed_as_revoked(web, worker, make_token, unique):
    """Celery hands task_revoked the task's Context, not the worker's request: the
    handler must read that, or the event never goes out (it raised AttributeError)."""
    import uuid

    from k1.celery import app
    from k1.tasks.submissions import send

    project, task_id = f"rev-{unique}", str(uuid.uuid4())
    app.control.revoke(task_id)  # before it is sent: the worker discards it on receipt
    with Listener(web, make_token(f"u-{unique}", project)) as listener:
        assert listener.subscribe(project)["ok"]
        send("k1.tasks.demo.flaky", kwargs={"project_id": project}, project_id=project,
             task_id=task_id)
        event = listener.wait_for(lambda r: r.name == "task_event"
                                  and r.data.get("task_id") == task_id, timeout=30)
    assert (event.data["type"], event.data["state"], event.data["message"]) == (
        "failed", "REVOKED", "revoked"), event.data
    assert event.data["task_name"] == "k1.tasks.demo.flaky" and event.data[
        "project_id"] == project
