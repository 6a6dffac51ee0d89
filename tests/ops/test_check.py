"""``k1 check`` against real servers: the configuration with its sources, then the first
problem with its fix."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from k1.settings import VARIABLES, Settings
from tests.ops.conftest import TLS_REDIS_PASSWORD, TLSRedis
from tests.ops.support import fresh_database
from tests.support import run_k1

STRONG_KEY = "Zq3v9LmT0xRk2WbN8sYc4HdJ7uPaE1fG6iKoQrS5tVwXyB"
FLOWER = "ops:a-long-flower-password"


def k1_check(tmp_path: Path, dotenv: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / ".env").write_text(dotenv)
    full = {**os.environ, "K1_SECRET_KEY": STRONG_KEY, "FLOWER_BASIC_AUTH": FLOWER, **env}
    for name in [name for name, value in full.items() if value == ""]:
        del full[name]  # "" means: not in the environment
    return run_k1("check", env=full, inherit=False, cwd=tmp_path, timeout=120)


def test_every_variable_settings_reads_is_listed() -> None:
    class Recorder(dict[str, str]):
        def get(self, name: str, default: str | None = None) -> str | None:
            read.add(name)
            return super().get(name, default)

    read: set[str] = set()
    Settings.from_env(Recorder(K1_SECRET_KEY=STRONG_KEY))
    assert read <= set(VARIABLES)


def test_ready_platform_passes_and_shows_sources_with_secrets_masked(
    services: dict[str, object], tmp_path: Path,
) -> None:
    done = k1_check(tmp_path, dotenv="K1_DLQ_MAX_ROWS=77\nK1_SECRET_KEY=from-dotenv-ignored\n")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
    assert lines["K1_DLQ_MAX_ROWS"].endswith("77  [.env]")
    assert lines["K1_SECRET_KEY"].endswith("[environment]")
    assert lines["K1_BREAKER_FAIL_MAX"].endswith("5  [default]")
    assert lines["FLOWER_BASIC_AUTH"].split()[1] == "ops:***"
    assert STRONG_KEY not in done.stdout and "a-long-flower-password" not in done.stdout
    assert "ok    database: database migrated to" in done.stdout


@pytest.mark.parametrize(("env", "named", "fix"), [
    ({"K1_SECRET_KEY": "k1-secret-" + "ab" * 20}, "K1_SECRET_KEY is guessable",
     "secrets.token_urlsafe(48)"),
    ({"FLOWER_BASIC_AUTH": ""}, "FLOWER_BASIC_AUTH is not set", "K1_FLOWER_AUTH=off"),
    ({"FLOWER_BASIC_AUTH": "ops:short"}, "FLOWER_BASIC_AUTH", "long random password"),
    ({"REDIS_URL": "redis://127.0.0.1:1/0"}, "Redis at redis://127.0.0.1:1/0 does not answer",
     "start Redis"),
    ({"CONDUCTOR_SERVER_URL": "http://127.0.0.1:1/api"}, "Conductor at http://127.0.0.1:1/api",
     "start the Conductor server"),
])
def test_first_problem_is_named_with_its_fix(
    services: dict[str, object], tmp_path: Path, env: dict[str, str], named: str, fix: str,
) -> None:
    done = k1_check(tmp_path, **env)
    assert done.returncode == 1, done.stdout
    failure = done.stdout[done.stdout.index("FAIL"):]
    assert named in failure and "fix: " in failure and fix in failure, failure


def test_flower_opt_out_is_explicit(services: dict[str, object], tmp_path: Path) -> None:
    done = k1_check(tmp_path, FLOWER_BASIC_AUTH="", K1_FLOWER_AUTH="off")
    assert done.returncode == 0, done.stdout
    assert "Flower authentication is off (K1_FLOWER_AUTH=off)" in done.stdout


def test_unmigrated_database_says_run_db_upgrade(services, tmp_path: Path) -> None:
    done = k1_check(tmp_path, DATABASE_URL=fresh_database("k1_unmigrated"))
    assert done.returncode == 1, done.stdout
    assert "the database is at revision (empty)" in done.stdout
    assert "fix: run `k1 db upgrade`" in done.stdout


def test_self_signed_tls_redis_names_the_setting_that_fixes_it(
    services: dict[str, object], tls_redis: TLSRedis, tmp_path: Path,
) -> None:
    refused = k1_check(tmp_path, REDIS_URL=tls_redis.url)
    assert refused.returncode == 1, refused.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stdout
    assert "fix: Redis' TLS certificate is not trusted" in refused.stdout
    assert "K1_REDIS_SSL_CERT_REQS=none" in refused.stdout
    assert TLS_REDIS_PASSWORD not in refused.stdout

    accepted = k1_check(tmp_path, REDIS_URL=tls_redis.url, K1_REDIS_SSL_CERT_REQS="none")
    assert "ok    redis: Redis 7." in accepted.stdout, accepted.stdout
