"""Tokens: signed, expiring, scoped to projects."""

import time

import jwt
import pytest

from k1.auth import InvalidToken, create_token, verify_token

KEY = "s" * 40


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
                          "iss": "k1"}, KEY, algorithm="HS256")
    with pytest.raises(InvalidToken, match="token expired"):
        verify_token(expired, secret=KEY)
    with pytest.raises(InvalidToken, match="missing token"):
        verify_token(None, secret=KEY)
    unsigned = jwt.encode({"sub": "ada", "projects": ["a"], "iat": 1, "exp": 2**31, "iss": "k1"},
                          None, algorithm="none")
    with pytest.raises(InvalidToken):
        verify_token(unsigned, secret=KEY)
