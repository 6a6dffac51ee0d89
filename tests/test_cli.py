"""The k1 command: tokens on stdout alone, configuration errors in words."""

import os
import subprocess

from k1.auth import verify_token
from tests.support import VENV_BIN


def run_k1(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "k1"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


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
