"""The Flask application factory and the Socket.IO extension.

    app = create_app()                       # settings from the environment
    socketio.run(app, port=settings.port)    # see k1.web.__main__
"""

from __future__ import annotations

from flask import Flask
from flask_socketio import SocketIO

from k1.events import SOCKETIO_CHANNEL
from k1.settings import Settings, get_settings
from k1.web import (
    auth,
    breakers,
    contract,
    dashboard,
    dlq,
    health,
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

socketio = SocketIO()

BLUEPRINTS = (health.bp, tasks.bp, dlq.bp, breakers.bp, metrics.bp, dashboard.bp, scheduler.bp,
              workflows.bp, auth.bp)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
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
        message_queue=settings.redis_url,
        channel=SOCKETIO_CHANNEL,
        # Same origin only unless K1_CORS_ORIGINS lists others; never '*'.
        cors_allowed_origins=list(settings.cors_origins) or None,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        max_http_buffer_size=MAX_CLIENT_PAYLOAD,
    )
    realtime.register(socketio)
    security.init_app(app)  # after Socket.IO: its answers get the headers too
    return app
