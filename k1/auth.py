"""Bearer tokens: signed (HS256, ``K1_SECRET_KEY``), naming a user and their projects.

    token = create_token("ada", ["acme"], secret=key, ttl=3600)
    principal = verify_token(token, secret=key)   # raises InvalidToken
    principal.can_see("acme")                     # True

The project ``*`` grants every project (operators).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ISSUER = "k1"
ALL_PROJECTS = "*"
LEEWAY = 5  # seconds of clock skew tolerated between hosts


class InvalidToken(Exception):
    """Missing, expired, forged or malformed token; the message says which."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    projects: frozenset[str]
    expires_at: int

    def can_see(self, project_id: str | None) -> bool:
        return ALL_PROJECTS in self.projects or (
            project_id is not None and str(project_id) in self.projects
        )

    @property
    def is_operator(self) -> bool:
        return ALL_PROJECTS in self.projects


def create_token(user_id: str, projects: Iterable[str], *, secret: str, ttl: int) -> str:
    projects = sorted({str(p) for p in projects})
    if not user_id:
        raise ValueError("a token needs a user")
    if not projects:
        raise ValueError("a token needs at least one project")
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    now = int(time.time())
    claims = {"sub": str(user_id), "projects": projects, "iat": now, "exp": now + ttl,
              "iss": ISSUER}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(token: str | None, *, secret: str) -> Principal:
    if not token:
        raise InvalidToken("missing token")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], issuer=ISSUER, leeway=LEEWAY,
            options={"require": ["sub", "exp", "iat", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    projects = claims.get("projects")
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise InvalidToken("invalid token: projects must be a list of strings")
    return Principal(str(claims["sub"]), frozenset(projects), int(claims["exp"]))
