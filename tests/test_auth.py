"""Tokens: signed, expiring, scoped to projects, revocable; sign-in tokens used once."""

import re
import time

import jwt
import pytest

from k1.auth import (
    LEEWAY,
    MAX_TTL,
    REVOKED_KEY,
    SIGNIN,
    SIGNIN_TTL,
    InvalidToken,
    create_signin_token,
    create_token,
    decode_token,
    exchange_signin_token,
    is_revoked,
    revoke,
    verify_token,
)
from k1.connections import get_redis

KEY = "s" * 40
pytestmark = pytest.mark.usefixtures("redis_server")  # the revocation list lives in Redis


def test_round_trip_names_user_and_projects() -> None:
    principal = verify_token(create_token("ada", ["acme", "b"], secret=KEY, ttl=60), secret=KEY)
    assert principal.user_id == "ada"
    assert principal.can_see("acme") and principal.can_see("b")
    assert not principal.can_see("other") and not principal.is_operator


def test_star_grants_every_project() -> None:
    principal = verify_token(create_token("ops", ["*"], secret=KEY, ttl=60), secret=KEY)
    assert principal.can_see("anything") and principal.is_operator


def test_forged_expired_and_missing_tokens_are_refused() -> None:
    with pytest.raises(InvalidToken, match="invalid token"):
        verify_token(create_token("ada", ["a"], secret="x" * 40, ttl=60), secret=KEY)
    expired = jwt.encode({"sub": "ada", "projects": ["a"], "iat": 1, "exp": int(time.time()) - 60,
                          "iss": "k1", "jti": "x"}, KEY, algorithm="HS256")
    with pytest.raises(InvalidToken, match="token expired"):
        verify_token(expired, secret=KEY)
    with pytest.raises(InvalidToken, match="missing token"):
        verify_token(None, secret=KEY)
    unsigned = jwt.encode({"sub": "ada", "projects": ["a"], "iat": 1, "exp": 2**31, "iss": "k1"},
                          None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(unsigned, secret=KEY)


@pytest.mark.parametrize(("projects", "ttl", "message"), [
    (["acme", ""], 60, "a project name cannot be empty"),
    ([" "], 60, "a project name cannot be empty"),
    ([], 60, "at least one project"),
    (["acme"], 0, "ttl must be between 1 and"),
    (["acme"], MAX_TTL + 1, "ttl must be between 1 and"),
    (["acme"], 30_000 * 365 * 86400, "(90 days)"),
])
def test_tokens_that_should_not_exist_are_refused(projects: list[str], ttl: int,
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        create_token("ada", projects, secret=KEY, ttl=ttl)


def test_a_token_without_an_id_is_refused() -> None:
    now = int(time.time())
    old_style = jwt.encode({"sub": "ada", "projects": ["a"], "iat": now, "exp": now + 60,
                            "iss": "k1"}, KEY, algorithm="HS256")
    with pytest.raises(InvalidToken, match="jti"):
        decode_token(old_style, secret=KEY)


def test_a_signin_token_is_no_session_token_and_the_other_way_round() -> None:
    signin = create_signin_token("operator", secret=KEY)
    with pytest.raises(InvalidToken, match="a signin token, not a session token"):
        decode_token(signin, secret=KEY)
    session = create_token("ada", ["a"], secret=KEY, ttl=60)
    with pytest.raises(InvalidToken, match="a session token, not a signin token"):
        decode_token(session, secret=KEY, use=SIGNIN)
    principal = decode_token(signin, secret=KEY, use=SIGNIN)
    assert principal.is_operator and principal.expires_at <= time.time() + SIGNIN_TTL + 1


def test_a_revoked_token_is_refused_until_it_would_have_expired() -> None:
    token = create_token("ada", ["a"], secret=KEY, ttl=120)
    principal = verify_token(token, secret=KEY)
    assert principal.token_id and not is_revoked(principal.token_id)
    assert revoke(principal.token_id, principal.expires_at) is True
    with pytest.raises(InvalidToken, match="token revoked"):
        verify_token(token, secret=KEY)
    assert revoke(principal.token_id, principal.expires_at) is False  # listed once
    other = verify_token(create_token("ada", ["a"], secret=KEY, ttl=120), secret=KEY)
    assert other.token_id != principal.token_id  # revoking one token spares the others
    ttl = get_redis().ttl(REVOKED_KEY.format(principal.token_id))
    assert 100 < ttl <= 120 + LEEWAY


def test_a_signin_token_is_exchanged_once_for_a_session_token() -> None:
    signin = create_signin_token("operator", secret=KEY)
    session, expires_at = exchange_signin_token(signin, secret=KEY, ttl=3600)
    principal = verify_token(session, secret=KEY)
    assert principal.user_id == "operator" and principal.is_operator
    assert principal.expires_at == expires_at
    with pytest.raises(InvalidToken, match="sign-in link already used"):
        exchange_signin_token(signin, secret=KEY, ttl=3600)
