"""Bearer tokens: signed (HS256, ``K1_SECRET_KEY``), naming a user and their projects.

    token = create_token("ada", ["acme"], secret=key, ttl=3600)
    principal = verify_token(token, secret=key)   # raises InvalidToken
    principal.can_see("acme")                     # True
    revoke(principal.token_id, principal.expires_at)   # refused from now on, everywhere

The project ``*`` grants every project (operators). Every token has an id (``jti``) that
the revocation list in Redis names; a revoked id stays listed until the token would have
expired anyway. A *sign-in* token (``create_signin_token``, the ``#signin=`` link that
``k1 token signin-link`` prints) is good for one thing only: one exchange for an
ordinary session token (:func:`exchange_signin_token`); no other route accepts it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
ISSUER = "k1"
ALL_PROJECTS = "*"
LEEWAY = 5  # seconds of clock skew tolerated between hosts
# The longest a token may live: a leaked token is useful for at most this long, and a
# revoked id is kept on the list as long. Long-lived uses (a Prometheus scrape job) renew
# monthly.
MAX_TTL = 90 * 24 * 3600
SIGNIN_TTL = 10 * 60  # s: the link printed by `make run` is opened within minutes
SESSION, SIGNIN = "session", "signin"  # the token's ``use`` claim
REVOKED_KEY = "k1:auth:revoked:{}"  # one key per revoked token id, expiring with the token


class InvalidToken(Exception):
    """Missing, expired, forged, revoked or malformed token; the message says which."""


@dataclass(frozen=True)
class Principal:
    user_id: str
    projects: frozenset[str]
    expires_at: int
    token_id: str = ""

    def can_see(self, project_id: str | None) -> bool:
        return ALL_PROJECTS in self.projects or (
            project_id is not None and str(project_id) in self.projects
        )

    @property
    def is_operator(self) -> bool:
        return ALL_PROJECTS in self.projects


def create_token(user_id: str, projects: Iterable[str], *, secret: str, ttl: int,
                 use: str = SESSION) -> str:
    """A signed token; ValueError naming what is wrong with the user, projects or ttl."""
    projects = sorted({str(p).strip() for p in projects})
    if not str(user_id).strip():
        raise ValueError("a token needs a user")
    if not projects:
        raise ValueError("a token needs at least one project")
    if "" in projects:
        raise ValueError("a project name cannot be empty")
    if not 0 < ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 and {MAX_TTL} seconds "
                         f"({MAX_TTL // 86400} days), got {ttl}")
    now = int(time.time())
    claims = {"sub": str(user_id), "projects": projects, "iat": now, "exp": now + ttl,
              "iss": ISSUER, "jti": uuid.uuid4().hex, "use": use}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def create_signin_token(user_id: str, *, secret: str, ttl: int = SIGNIN_TTL) -> str:
    """A short-lived, single-use operator token for a sign-in link."""
    return create_token(user_id, [ALL_PROJECTS], secret=secret, ttl=ttl, use=SIGNIN)


def decode_token(token: str | None, *, secret: str, use: str | None = SESSION,
                 verify_exp: bool = True) -> Principal:
    """The token's principal, its signature and claims checked, without the revocation
    list (``k1 token revoke`` reads tokens with it; ``use=None``: any use); most callers
    want verify_token."""
    if not token:
        raise InvalidToken("missing token")
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], issuer=ISSUER, leeway=LEEWAY,
            options={"require": ["sub", "exp", "iat", "iss", "jti"], "verify_exp": verify_exp},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    projects = claims.get("projects")
    if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
        raise InvalidToken("invalid token: projects must be a list of strings")
    if use is not None and claims.get("use", SESSION) != use:
        raise InvalidToken(f"invalid token: a {claims.get('use')} token, not a {use} token")
    return Principal(str(claims["sub"]), frozenset(projects), int(claims["exp"]),
                     str(claims["jti"]))


def verify_token(token: str | None, *, secret: str, use: str = SESSION) -> Principal:
    """The principal of a valid, unrevoked token of ``use``; InvalidToken otherwise.

    Reads the revocation list in Redis (redis errors propagate: refuse, never guess).
    """
    principal = decode_token(token, secret=secret, use=use)
    if is_revoked(principal.token_id):
        raise InvalidToken("token revoked")
    return principal


def is_revoked(token_id: str) -> bool:
    from k1.connections import get_redis

    return bool(get_redis().exists(REVOKED_KEY.format(token_id)))


def revoke(token_id: str, expires_at: int | None = None) -> bool:
    """Put ``token_id`` on the revocation list until ``expires_at`` (epoch s; unknown:
    the longest a token can live). False if it was listed already."""
    from k1.connections import get_redis

    until = (expires_at if expires_at is not None else int(time.time()) + MAX_TTL) + LEEWAY
    return bool(get_redis().set(REVOKED_KEY.format(token_id), int(time.time()), exat=until,
                                nx=True))


def exchange_signin_token(token: str | None, *, secret: str, ttl: int) -> tuple[str, int]:
    """Trade a sign-in token for a session token of the same user and projects, once.

    Returns ``(session token, its expiry in epoch s)``. The sign-in token is revoked by
    the exchange itself (SET NX), so of two concurrent exchanges exactly one wins.
    """
    principal = decode_token(token, secret=secret, use=SIGNIN)
    if not revoke(principal.token_id, principal.expires_at):
        raise InvalidToken("sign-in link already used")
    session = create_token(principal.user_id, principal.projects, secret=secret, ttl=ttl)
    return session, decode_token(session, secret=secret).expires_at
