"""Socket.IO: authenticated connections, per-project and per-user rooms.

Every event reaches only the connections whose token may see its project, whatever room
it was sent to: :class:`ProjectScopedManager`, the web process's Socket.IO Redis manager,
drops the other recipients of each emit (local or relayed from a worker). So a token of
user ``bob`` for project ``p1`` gets bob's ``p1`` events through ``user_bob`` and none of
his ``p2`` events. Events without a project (``platform``) reach every connection.

A client connects with ``auth={"token": ...}``; it joins ``user_<id>`` and
``platform`` (platform-wide events such as breaker states) at once, and
``project_<id>`` on ``subscribe {"project_id": ...}`` for a project its token grants.
Refusals are answered with an ``error`` event, never ignored. A connection whose token
expires (or is revoked) is told so with an ``error`` event and disconnected by the server.

Delivery latency (a validation metric) is measured where it ends, in the dashboard: it
asks ``clock`` for the server's time to learn its clock offset, subtracts each event's
``ts`` (set when the worker emitted it) from the moment it received it, and reports the
samples in batches with ``latency {"samples": [ms, ...]}`` (:mod:`k1.events.metrics`
keeps a histogram). Every ``METRICS_INTERVAL`` one web process broadcasts the metrics
report to ``platform`` as the ``metrics`` event, with only the newest minutes of chart
data (it goes to every connection; the page loads the whole hour from ``/api/metrics``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import redis
import socketio as python_socketio
from flask import Flask, current_app, request
from flask_socketio import SocketIO, join_room, leave_room
from flask_socketio import emit as reply

from k1.auth import InvalidToken, Principal, is_revoked, verify_token
from k1.connections import get_redis
from k1.events import OPERATORS_ROOM, PLATFORM_ROOM, metrics, project_room, user_room
from k1.tasks.submissions import SubmissionError, validate_project_id
from k1.web import relay
from k1.web.metrics import dlq_stats
from k1.web.offload import blocking

log = logging.getLogger(__name__)


def _sid() -> str:
    """The Socket.IO session id of the current event's connection."""
    return request.sid  # type: ignore[attr-defined]  # Flask-SocketIO sets it on its requests

METRICS_INTERVAL = 5.0  # seconds between two ``metrics`` broadcasts
METRICS_SERIES_MINUTES = 2  # minutes of chart data per broadcast; clients merge them
METRICS_LEADER_KEY = "k1:metrics:broadcaster"  # one web process broadcasts per interval
EXPIRY_CHECK_INTERVAL = 1.0  # seconds: a connection outlives its token by at most this
REVOCATION_CHECK_INTERVAL = 5.0  # seconds between two looks at the revocation list (Redis)
RELAY_CONNECT_TIMEOUT = 5.0  # s; the relay's reads wait up to relay.BLOCK_MS on top of it


class ProjectScopedManager(python_socketio.RedisManager):
    """python-socketio's Redis manager, delivering each event only where it may be seen.

        socketio.init_app(app, client_manager=ProjectScopedManager(url, channel="k1-socketio"))
        manager.principals[sid] = principal     # on connect; popped on disconnect

    Every emit, from this process or relayed from another over Redis, goes through
    ``_handle_emit``: the connections in its rooms whose principal may not see the event's
    ``project_id`` are added to ``skip_sid``, and the library delivers the rest. A reply
    addressed to one connection (its sid as the room) is that connection's own answer and
    passes as it is; so does an event without a project.
    """

    def __init__(self, url: str, channel: str) -> None:
        super().__init__(url, channel=channel)
        self.principals: dict[str, Principal] = {}  # by sid, this process's connections

    # A private hook of python-socketio's PubSubManager, and the only place where every
    # emit, local or relayed from another process, passes before delivery: the library
    # offers no public one (its public emit() sees this process's emits only).
    def _handle_emit(self, message: dict[str, Any]) -> None:
        project_id = _project_of(message)
        namespace, room = message.get("namespace") or "/", message.get("room")
        if project_id is not None and not (isinstance(room, str)
                                           and self.is_connected(room, namespace)):
            denied = [sid for sid, _ in self.get_participants(namespace, room)
                      if not self._may_see(sid, project_id)]
            if denied:
                skip = message.get("skip_sid")
                skip = skip if isinstance(skip, list) else [] if skip is None else [skip]
                message = {**message, "skip_sid": [*skip, *denied]}
        super()._handle_emit(message)

    def emit_here(self, event: str, data: dict[str, Any], room: list[str]) -> None:
        """Deliver ``event`` to this process's connections in ``room``, scoped like every
        emit, without publishing it to the other processes: for what every process reads
        for itself (the task transitions, :mod:`k1.web.relay`)."""
        self._handle_emit({"event": event, "data": [data], "namespace": "/", "room": room,
                           "skip_sid": None})

    def _may_see(self, sid: str, project_id: str) -> bool:
        principal = self.principals.get(sid)
        return principal is not None and principal.can_see(project_id)


def _project_of(message: dict[str, Any]) -> str | None:
    """The ``project_id`` of an emitted event (the first argument, a dict), if any."""
    data = message.get("data")
    first = data[0] if isinstance(data, list) and data else None
    project_id = first.get("project_id") if isinstance(first, dict) else None
    return None if project_id is None else str(project_id)


def _principals(socketio: SocketIO) -> dict[str, Principal]:
    return socketio.server.manager.principals


def register(socketio: SocketIO) -> None:
    @socketio.on("connect")
    def connect(auth: Any = None) -> bool:
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            principal = verify_token(
                token, secret=current_app.config["K1_SETTINGS"].secret_key
            )
        except InvalidToken as exc:
            current_app.logger.info("socket connect refused: %s", exc)
            return False
        _principals(socketio)[_sid()] = principal
        join_room(user_room(principal.user_id))
        join_room(PLATFORM_ROOM)
        if principal.is_operator:
            join_room(OPERATORS_ROOM)
        # The app behind the proxy, for the background tasks: Flask documents
        # _get_current_object() as the way to hand the real app to another thread.
        app = current_app._get_current_object()  # type: ignore[attr-defined]  # proxy stub
        _start_background_tasks(socketio, app)
        return True

    @socketio.on("disconnect")
    def disconnect(*_: Any) -> None:
        _principals(socketio).pop(_sid(), None)

    @socketio.on("subscribe")
    def subscribe(data: Any = None) -> dict[str, Any]:
        return _change_room(_principals(socketio).get(_sid()), data, join=True)

    @socketio.on("unsubscribe")
    def unsubscribe(data: Any = None) -> dict[str, Any]:
        return _change_room(_principals(socketio).get(_sid()), data, join=False)

    @socketio.on("clock")
    def clock(*_: Any) -> dict[str, float]:
        return {"now_ms": time.time() * 1000}

    @socketio.on("latency")
    def latency(data: Any = None) -> dict[str, Any]:
        samples = data.get("samples") if isinstance(data, dict) else None
        if _sid() not in _principals(socketio):
            return _refuse("latency", "not authenticated", None)
        if not isinstance(samples, list):
            return _refuse("latency", "samples: required, a list of milliseconds", None)
        return {"ok": True, "action": "latency", "recorded": metrics.record_latency(samples)}


def drop_all_connections(socketio: SocketIO) -> int:
    """Close every Engine.IO connection of this process without a Socket.IO disconnect, as
    a lost transport: clients reconnect by themselves (to another web process). Returns
    how many were closed. For a shutdown (``python -m k1.web`` on SIGTERM)."""
    sockets = list(socketio.server.eio.sockets.values())
    for sock in sockets:
        sock.close(wait=False, abort=True, reason=socketio.server.eio.reason.SERVER_DISCONNECT)
    return len(sockets)


def _start_background_tasks(socketio: SocketIO, app: Flask) -> None:
    """Start this process's ``metrics`` broadcaster, connection reaper and task event
    relay, once, on the first connection. The relay starts after the stream's newest
    record, read here, before the connection is accepted (should Redis not answer, after
    the newest record once it does: never from the stream's beginning)."""
    if app.extensions.get("k1_socket_tasks"):
        return
    app.extensions["k1_socket_tasks"] = True
    socketio.start_background_task(_broadcast_metrics, socketio, app)
    socketio.start_background_task(_reap_connections, socketio)
    client = redis.Redis.from_url(  # its own: a blocking read holds its connection
        app.config["K1_SETTINGS"].redis_url, socket_connect_timeout=RELAY_CONNECT_TIMEOUT,
        socket_timeout=relay.BLOCK_MS / 1000 + RELAY_CONNECT_TIMEOUT)
    try:
        after: str | None = relay.newest_id(client)
    except redis.RedisError as exc:
        log.warning("task event relay waits for Redis: %s", exc)
        after = None  # the relay reads the newest record itself once Redis answers
    socketio.start_background_task(relay.relay, socketio, client, after)


def _reap_connections(socketio: SocketIO) -> None:
    """Disconnect every connection whose token has expired or been revoked.

    The client is told why (an ``error`` event with ``action: "connection"``) and then
    disconnected by the server, so Socket.IO clients do not reconnect on their own with
    the same token.
    """
    last_revocation_check = 0.0
    while True:
        socketio.sleep(EXPIRY_CHECK_INTERVAL)
        now = time.time()
        check_revoked = time.monotonic() - last_revocation_check >= REVOCATION_CHECK_INTERVAL
        revoked: dict[str, bool] = {}  # by token id: one look per token, not per connection
        try:
            for sid, principal in list(_principals(socketio).items()):
                if principal.expires_at <= now:
                    _drop(socketio, sid, "token expired")
                elif check_revoked:
                    if principal.token_id not in revoked:
                        revoked[principal.token_id] = is_revoked(principal.token_id)
                    if revoked[principal.token_id]:
                        _drop(socketio, sid, "token revoked")
        except Exception as exc:  # a Redis hiccup skips a round, never ends the loop
            log.warning("connection reaper skipped a round: %s", exc)
        if check_revoked:
            last_revocation_check = time.monotonic()


def _drop(socketio: SocketIO, sid: str, reason: str) -> None:
    socketio.emit("error", {"ok": False, "action": "connection", "project_id": None,
                            "error": f"{reason}; reconnect with a fresh token"}, to=sid)
    _principals(socketio).pop(sid, None)  # nothing more reaches it meanwhile
    socketio.server.disconnect(sid)


def _broadcast_metrics(socketio: SocketIO, app: Flask) -> None:
    me = uuid.uuid4().hex
    lease_ms = int(METRICS_INTERVAL * 900)  # expires just before the next round
    while True:
        socketio.sleep(METRICS_INTERVAL)
        try:
            if not get_redis().set(METRICS_LEADER_KEY, me, nx=True, px=lease_ms):
                continue
            with app.app_context():
                report = metrics.report(blocking(dlq_stats),
                                        series_minutes=METRICS_SERIES_MINUTES)
            socketio.emit("metrics", report, to=PLATFORM_ROOM)
        except Exception as exc:  # a Redis hiccup skips a round, never ends the loop
            log.warning("metrics broadcast skipped: %s", exc)


def _change_room(principal: Principal | None, data: Any, *, join: bool) -> dict[str, Any]:
    action = "subscribe" if join else "unsubscribe"
    project_id = data.get("project_id") if isinstance(data, dict) else None
    if principal is None:
        return _refuse(action, "not authenticated", project_id)
    if principal.expires_at < time.time():
        return _refuse(action, "token expired; reconnect with a fresh token", project_id)
    try:
        project_id = validate_project_id(project_id)
    except SubmissionError as exc:
        return _refuse(action, str(exc), None)
    if not principal.can_see(project_id):
        return _refuse(action, f"token does not grant project {project_id!r}", project_id)
    (join_room if join else leave_room)(project_room(project_id))
    return {"ok": True, "action": action, "project_id": project_id}


def _refuse(action: str, error: str, project_id: Any) -> dict[str, Any]:
    answer = {"ok": False, "action": action, "error": error, "project_id": project_id}
    reply("error", answer)
    return answer
