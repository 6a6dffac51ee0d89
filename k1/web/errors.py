"""API errors: raised anywhere in a request, rendered once as ``{"error", "detail"}``.

A dependency that cannot be reached while a request is served (PostgreSQL, Redis) is a
503 naming it, for every blueprint: the client may retry, nothing was half done by us.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis.exceptions
import sqlalchemy.exc
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import BadRequest, HTTPException

# Connection-level failures only: a query the database refuses (DataError,
# IntegrityError) is a bug or bad input, not an outage.
UNAVAILABLE = {
    "database unavailable": (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError),
    "redis unavailable": (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
}


# What a view or an error handler returns: a response, or one with its status code. Not
# Flask's ResponseReturnValue: spectree evaluates the annotations of the views it
# validates, and that alias names classes Flask imports for type checkers only.
Answer = Response | tuple[Response, int] | tuple[str, int]


class APIError(Exception):
    """An error for the client: ``raise APIError(400, "limit must be >= 1", detail=...)``."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def json_object() -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    if not request.get_data(cache=True):
        raise APIError(400, "request body must be a JSON object", detail="the body is empty")
    if not request.is_json:
        raise APIError(
            400, "request body must be a JSON object",
            detail=f"Content-Type is {request.content_type!r}, expected 'application/json'",
        )
    try:
        body = request.get_json()
    except BadRequest as exc:
        raise APIError(400, "request body must be a JSON object",
                       detail=f"malformed JSON: {_reason(exc)}") from None
    if not isinstance(body, dict):
        raise APIError(
            400, "request body must be a JSON object", detail=f"got {type(body).__name__}"
        )
    return body


def _reason(exc: BadRequest) -> str:
    cause = exc.__context__ or exc.__cause__
    return str(cause) if cause else str(exc.description)


def error_response(exc: APIError) -> Answer:
    """The JSON answer for ``exc``; blueprints use it to map their own exceptions."""
    return jsonify(error=exc.error, detail=exc.detail), exc.status


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(APIError, error_response)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Answer | HTTPException:
        if not request.path.startswith("/api/"):
            return exc
        response = jsonify(error=exc.name.lower(), detail=exc.description)
        response.status_code = exc.code or 500
        for name, value in exc.get_headers():  # Allow on a 405, ...
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    for error, classes in UNAVAILABLE.items():
        for cls in classes:
            app.register_error_handler(cls, _unavailable(app, error))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Answer:
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify(error="internal server error", detail=type(exc).__name__), 500


def _unavailable(app: Flask, error: str) -> Callable[[Exception], Answer]:
    def handler(exc: Exception) -> Answer:
        app.logger.warning("%s on %s %s: %s", error, request.method, request.path, exc)
        return jsonify(error=error, detail=type(exc).__name__), 503

    return handler
