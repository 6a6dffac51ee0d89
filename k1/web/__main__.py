"""``python -m k1.web``: the web process (Procfile ``web``), one async worker.

Monkey-patching comes first, before anything imports socket or threading: the Redis
message queue of python-socketio needs a green socket under eventlet.
"""

import os
import warnings

# Eventlet is in maintenance mode and says so on import; K1 knows (K1_ASYNC_MODE switches).
warnings.filterwarnings("ignore", message="\nEventlet is deprecated")
_ASYNC_MODE = os.environ.get("K1_ASYNC_MODE", "eventlet").strip().lower()
if _ASYNC_MODE == "eventlet":
    import eventlet

    eventlet.monkey_patch()
elif _ASYNC_MODE == "gevent":
    from gevent import monkey

    monkey.patch_all()

import gc  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

from k1.settings import SettingsError, get_settings  # noqa: E402

SHUTDOWN_GRACE = 20  # seconds for requests in flight after SIGTERM; Heroku allows 30


def main() -> int:
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"k1 web: configuration error: {exc}", file=sys.stderr)
        return 2
    from k1.logs import configure_logging
    from k1.web.app import SOCKET_TIMEOUT, create_app, socketio
    from k1.web.realtime import drop_all_connections

    configure_logging(settings.log_level)
    app = create_app(settings)
    # Everything imported so far lives as long as the process: keep it out of the garbage
    # collector's full passes, which otherwise pause the relay (bench/realtime.py: p95 at
    # 1000 clients x 20 events/s fell from ~240 ms to ~150 ms).
    gc.collect()
    gc.freeze()
    print(f"k1 web: listening on http://{settings.host}:{settings.port}", flush=True)
    if settings.async_mode == "eventlet":
        serve_eventlet(app, settings.host, settings.port, SOCKET_TIMEOUT,
                       on_stop=lambda: drop_all_connections(socketio))
        return 0
    # threading mode serves with Werkzeug, which Flask-SocketIO refuses without a tty
    # unless told: K1_ASYNC_MODE=threading is a deliberate choice (see docs/realtime.md).
    socketio.run(app, host=settings.host, port=settings.port, log_output=False,
                 allow_unsafe_werkzeug=settings.async_mode == "threading")
    return 0


def serve_eventlet(app: object, host: str, port: int, socket_timeout: float,
                   on_stop: Callable[[], object] = lambda: None) -> None:
    """What ``socketio.run`` does under eventlet, with Nagle's algorithm off.

    eventlet's WSGI server writes headers and body separately; with Nagle on, a response
    larger than one segment waits for the client's delayed ACK (~40 ms on Linux): a
    50-letter ``GET /api/dlq`` took 48 ms instead of 3. Accepted sockets inherit the
    option from the listener. ``socket_timeout`` bounds every read and write on a client's
    socket.

    SIGTERM stops it gracefully: ``on_stop`` runs (the Socket.IO connections are dropped,
    so clients reconnect to another web process), the listener stops accepting, requests
    in flight are answered, and the server returns; after ``SHUTDOWN_GRACE`` the process
    exits whatever is still running (Heroku kills it 30 s after SIGTERM anyway).
    """
    import signal
    import socket

    import eventlet.wsgi
    import greenlet

    server = greenlet.getcurrent()

    def stop() -> None:
        print("k1 web: SIGTERM, closing connections and finishing requests", flush=True)
        on_stop()
        eventlet.spawn_after(SHUTDOWN_GRACE, os._exit, 1)
        eventlet.kill(server, SystemExit)  # eventlet.wsgi.server stops accepting, drains
        listener.close()  # new connections are refused at once (the router tries another)

    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = eventlet.listen(address, family)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    signal.signal(signal.SIGTERM, lambda *_: eventlet.spawn_n(stop))
    eventlet.wsgi.server(listener, app, log_output=False, socket_timeout=socket_timeout)


if __name__ == "__main__":
    sys.exit(main())
