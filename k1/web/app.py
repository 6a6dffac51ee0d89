"""The Flask application factory and the Socket.IO extension.

    app = create_app()                       # settings from the environment
    socketio.run(app, port=settings.port)    # see k1.web.__main__
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from flask_socketio import SocketIO

from k1.celery import serve_requests
from k1.events import SOCKETIO_CHANNEL, publish_in_caller_thread
from k1.settings import Settings, get_settings
from k1.web import (
    auth,
    breakers,
    contract,
    dashboard,
    dlq,
    health,
    limits,
    metrics,
    realtime,
    scheduler,
    security,
    tasks,
    workflows,
)
from k1.web.errors import register_error_handlers

# Heartbeat: a ping every 25 s; a client silent for 25 + 20 s is dropped.
PING_INTERVAL = 25
PING_TIMEOUT = 20
MAX_CLIENT_PAYLOAD = 64 * 1024  # bytes; client events are small (subscribe/unsubscribe)
SOCKETIO_PATH = "/socket.io/"
# Seconds a client may keep a request half-sent, or a kept-alive connection idle, before
# its socket is closed (eventlet's server): a slow client cannot hold a green thread
# forever. Socket.IO's WebSocket sets its own, longer timeout after the upgrade (ping
# interval + ping timeout), so idle dashboards stay connected.
SOCKET_TIMEOUT = 15

socketio = SocketIO()

BLUEPRINTS = (health.bp, tasks.bp, dlq.bp, breakers.bp, metrics.bp, dashboard.bp, scheduler.bp,
              workflows.bp, auth.bp, limits.bp)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    publish_in_caller_thread()  # green threads and eventlet's real ones: no flusher thread
    serve_requests()  # one shared result backend, no retry loop on reads (k1.celery)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        K1_SETTINGS=settings,
        JSON_SORT_KEYS=False,
        MAX_CONTENT_LENGTH=1024 * 1024,  # 1 MiB request bodies at most
    )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    contract.init_app(app)  # bounded JSON bodies, GET /api/openapi.json
    socketio.init_app(
        app,
        async_mode=settings.async_mode,
        client_manager=realtime.ProjectScopedManager(settings.redis_url, SOCKETIO_CHANNEL),
        # Same origin only unless K1_CORS_ORIGINS lists others; never '*'.
        cors_allowed_origins=list(settings.cors_origins) or None,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_http_buffer_size=MAX_CLIENT_PAYLOAD,
    )
    # Flask-SocketIO has wrapped wsgi_app; the limit goes in front of it.
    # WSGI middleware, Flask's documented way (the assignment mypy calls a method-assign).
    app.wsgi_app = PollingPayloadLimit(  # type: ignore[method-assign]
        app.wsgi_app, MAX_CLIENT_PAYLOAD)
    realtime.register(socketio)
    security.init_app(app)  # after Socket.IO: its answers get the headers too
    return app


class PollingPayloadLimit:
    """Answer 413 at once to a Socket.IO long-polling POST larger than ``limit`` bytes.

    python-engineio refuses such a POST by closing the session, and waits for a pending
    poll to drain it first: with no poll pending the request hung unanswered. Here the
    body is not even read. (WebSocket messages are capped by ``max_http_buffer_size``.)
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], limit: int) -> None:
        self.app, self.limit = app, limit

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Iterable[bytes]:
        if (environ.get("REQUEST_METHOD") == "POST"
                and environ.get("PATH_INFO", "").startswith(SOCKETIO_PATH)
                and _content_length(environ) > self.limit):
            body = json.dumps({"error": "payload too large",
                               "detail": {"limit_bytes": self.limit}}).encode()
            start_response("413 Request Entity Too Large", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("Connection", "close")])
            return [body]
        return self.app(environ, start_response)


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:  # a malformed header: the server below refuses it
        return 0
