"""The k1 command: tokens on stdout alone, configuration errors in words."""

import os
from urllib.parse import urlsplit

import pytest

from k1.auth import SIGNIN, InvalidToken, decode_token, verify_token
from tests.support import run_k1

pytestmark = pytest.mark.usefixtures("redis_server")  # the revocation list lives in Redis



def test_token_create_prints_the_token_alone() -> None:
    done = run_k1("token", "create", "--user", "ada", "--project", "acme", "--project", "b",
                  "--ttl", "120")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n"
    principal = verify_token(token, secret=os.environ["K1_SECRET_KEY"])
    assert principal.user_id == "ada" and principal.projects == {"acme", "b"}
    assert principal.expires_at - 120 <= __import__("time").time() + 5


def test_configuration_error_is_reported_and_exits_2() -> None:
    done = run_k1("token", "create", "--user", "a", "--project", "p", env={"PORT": "http"})
    assert done.returncode == 2
    assert "configuration error: PORT: expected an integer, got 'http'" in done.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--project", ""), "a project name cannot be empty"),
    (("--project", "acme", "--project", " "), "a project name cannot be empty"),
    (("--project", "acme", "--ttl", str(30_000 * 365 * 86400)), "ttl must be between 1 and"),
])
def test_token_create_refuses_tokens_that_should_not_exist(args: tuple[str, ...],
                                                           message: str) -> None:
    done = run_k1("token", "create", "--user", "ada", *args)
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr


def test_token_revoke_refuses_the_token_everywhere() -> None:
    token = run_k1("token", "create", "--user", "ada", "--project", "acme").stdout.strip()
    secret = os.environ["K1_SECRET_KEY"]
    token_id = verify_token(token, secret=secret).token_id
    done = run_k1("token", "revoke", token)
    assert done.returncode == 0 and done.stdout.strip() == f"token {token_id} revoked"
    with pytest.raises(InvalidToken, match="token revoked"):
        verify_token(token, secret=secret)
    again = run_k1("token", "revoke", "--id", token_id)
    assert again.stdout.strip() == f"token {token_id} was revoked already"
    forged = run_k1("token", "revoke", "not-a-token")
    assert forged.returncode == 2 and "not a token of this platform" in forged.stderr


def test_signin_link_carries_a_short_lived_operator_signin_token() -> None:
    done = run_k1("token", "signin-link", "--base-url", "http://127.0.0.1:5000/")
    assert done.returncode == 0, done.stderr
    link = urlsplit(done.stdout.strip())
    assert (link.scheme, link.netloc, link.path) == ("http", "127.0.0.1:5000", "/")
    assert link.fragment.startswith("signin=")
    principal = decode_token(link.fragment.removeprefix("signin="),
                             secret=os.environ["K1_SECRET_KEY"], use=SIGNIN)
    assert principal.is_operator and principal.user_id == "operator"
    assert principal.expires_at <= __import__("time").time() + 10 * 60 + 5
