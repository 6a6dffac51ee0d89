"""What every answer of the web process carries, and how fast a token may write.

- Headers: ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on
  every response (Socket.IO's included, hence a WSGI middleware rather than a Flask
  hook), and a Content-Security-Policy on HTML that sets none itself (error pages; the
  dashboard sets its own, looser one).
- Rate limits (Flask-Limiter, counters in the K1 Redis): API writes (POST, PUT, PATCH,
  DELETE under ``/api/``) are limited per user of a valid token, else per client address;
  over the limit the answer is ``429 {"error": "too many requests", ...}`` with
  ``Retry-After``. ``K1_API_WRITE_LIMIT`` (read by :mod:`k1.settings`) overrides the
  default (limits notation: ``"20/second;600/minute"``). While Redis is unreachable writes are not
  limited: the limiter must not turn a Redis blip into refused requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from k1.auth import InvalidToken, decode_token
from k1.connections import REDIS_SOCKET_TIMEOUT

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RATE_LIMIT_PREFIX = "k1:ratelimit"
HTML_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
ALWAYS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


def _caller() -> str:
    """Whose budget a request spends: the token's user, else the client address."""
    from k1.web.auth import bearer_token

    try:
        principal = decode_token(bearer_token(),
                                 secret=current_app.config["K1_SETTINGS"].secret_key)
    except InvalidToken:
        return f"address:{get_remote_address()}"
    return f"user:{principal.user_id}"


def _not_a_write() -> bool:
    return request.method not in WRITE_METHODS or not request.path.startswith("/api/")


def init_app(app: Flask) -> None:
    """Limit writes and add the headers. Call after Socket.IO wrapped the WSGI app."""
    Limiter(
        _caller,
        app=app,
        default_limits=[app.config["K1_SETTINGS"].api_write_limit],
        default_limits_exempt_when=_not_a_write,
        storage_uri=app.config["K1_SETTINGS"].redis_url,
        # A Redis that hangs must not hang every write: fail fast, then let it through.
        storage_options={"socket_timeout": int(REDIS_SOCKET_TIMEOUT),
                         "socket_connect_timeout": int(REDIS_SOCKET_TIMEOUT)},
        strategy="sliding-window-counter",  # no double burst at a window's edge
        key_prefix=RATE_LIMIT_PREFIX,
        headers_enabled=True,  # Retry-After (and X-RateLimit-*) on the answers
        swallow_errors=True,
    )
    # Flask's documented way to wrap its WSGI app in middleware.
    app.wsgi_app = SecurityHeaders(app.wsgi_app)  # type: ignore[method-assign]


class SecurityHeaders:
    """WSGI middleware adding :data:`ALWAYS` and, on HTML without one, :data:`HTML_CSP`."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        def with_headers(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            present = {name.lower(): value for name, value in headers}
            headers = [*headers, *((name, value) for name, value in ALWAYS
                                   if name.lower() not in present)]
            if (present.get("content-type", "").startswith("text/html")
                    and "content-security-policy" not in present):
                headers.append(("Content-Security-Policy", HTML_CSP))
            return start_response(status, headers, *exc_info)

        return self.wsgi_app(environ, with_headers)
