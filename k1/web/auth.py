"""Request authentication: ``Authorization: Bearer <token>`` from ``k1 token create``.

    @bp.post("/things")
    @require_auth
    def create_thing():
        authorize_project(body["project_id"])     # 403 unless the token names it
        current_principal().user_id

``POST /api/auth/exchange`` trades a sign-in token (the ``#signin=`` link of
``k1 token signin-link``) for a session token, once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, current_app, g, jsonify, request
from pydantic import BaseModel

from k1.auth import InvalidToken, Principal, exchange_signin_token, verify_token
from k1.settings import DEFAULT_TOKEN_TTL
from k1.web.contract import Error, Response, validate
from k1.web.errors import Answer, APIError

F = TypeVar("F", bound=Callable[..., Any])


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def require_auth(view: F) -> F:
    """401 unless the request carries a valid bearer token."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            g.principal = verify_token(
                bearer_token(), secret=current_app.config["K1_SETTINGS"].secret_key
            )
        except InvalidToken as exc:
            raise APIError(401, "authentication required", detail=str(exc)) from None
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps F


def current_principal() -> Principal:
    return g.principal


def authorize_project(project_id: str | None) -> None:
    """403 unless the current token may reach ``project_id``."""
    if not current_principal().can_see(project_id):
        raise APIError(403, "forbidden", detail=f"token does not grant project {project_id!r}")


def require_operator() -> None:
    """403 unless the token grants every project (platform-wide actions)."""
    if not current_principal().is_operator:
        raise APIError(403, "forbidden", detail="this action needs an operator token (project '*')")


bp = Blueprint("auth", __name__)


class SessionToken(BaseModel):
    token: str
    expires_at: int


@bp.post("/api/auth/exchange")
@validate(public=True, tags=("auth",), resp=Response(HTTP_200=SessionToken, HTTP_401=Error,
                                                     HTTP_429=Error, HTTP_503=Error))
def exchange() -> Answer:
    """Trade the sign-in token in ``Authorization: Bearer`` for a session token (once)."""
    try:
        token, expires_at = exchange_signin_token(
            bearer_token(), secret=current_app.config["K1_SETTINGS"].secret_key,
            ttl=DEFAULT_TOKEN_TTL)
    except InvalidToken as exc:
        raise APIError(401, "authentication required", detail=str(exc)) from None
    return jsonify(token=token, expires_at=expires_at)
