"""Exposure by default: Flower refuses to start open, make run's Redis wants a password."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis
import requests

from tests.conftest import LOGS
from tests.ops.support import mirror_repo
from tests.support import VENV_BIN, Process, free_port

FLOWER_START_TIMEOUT = 60  # s; Flower imports Celery and tornado, slow on a loaded machine


def flower_env(**env: str) -> dict[str, str]:
    full = {**os.environ, "FLOWER_PORT": str(free_port()), "K1_HOST": "127.0.0.1", **env}
    return {name: value for name, value in full.items() if value != ""}


def test_flower_refuses_to_start_without_a_password(services: dict[str, object]) -> None:
    done = subprocess.run([str(VENV_BIN / "k1"), "flower"], capture_output=True, text=True,
                          env=flower_env(FLOWER_BASIC_AUTH=""), timeout=60)
    assert done.returncode == 1
    assert "refusing to start Flower: FLOWER_BASIC_AUTH is not set" in done.stderr
    assert "K1_FLOWER_AUTH=off" in done.stderr


@pytest.mark.parametrize(("env", "anonymous_status"), [
    ({"FLOWER_BASIC_AUTH": "ops:flower-password-long"}, 401),
    ({"FLOWER_BASIC_AUTH": "", "K1_FLOWER_AUTH": "off"}, 200),
])
def test_flower_starts_with_a_password_or_an_explicit_opt_out(
    services: dict[str, object], env: dict[str, str], anonymous_status: int,
) -> None:
    full = flower_env(**env)
    url = f"http://127.0.0.1:{full['FLOWER_PORT']}"
    flower = Process(f"k1-flower-{full['FLOWER_PORT']}", [str(VENV_BIN / "k1"), "flower"],
                     full, LOGS).start()
    try:
        flower.wait_until(lambda: requests.get(f"{url}/healthcheck", timeout=2).ok,
                          FLOWER_START_TIMEOUT, "Flower never answered /healthcheck")
        assert requests.get(f"{url}/", timeout=10).status_code == anonymous_status
    finally:
        flower.stop()


@pytest.mark.slow
def test_make_run_starts_redis_with_the_password_in_dotenv(
    services: dict[str, object], tmp_path: Path,
) -> None:
    root = mirror_repo(tmp_path / "k1")
    port, password = free_port(), "run-sh-test-password"
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    (root / ".env").write_text(f"REDIS_URL={url}\n")
    web_port = free_port()
    env = {**os.environ, "PORT": str(web_port)}
    del env["REDIS_URL"]  # only .env names this Redis
    run = Process("make-run-redis", [str(root / "scripts" / "run.sh"), "web"], env, LOGS,
                  cwd=root).start()
    try:
        run.wait_until(lambda: requests.get(f"http://127.0.0.1:{web_port}/api/health",
                                            timeout=2).json()["redis"]["status"] == "up",
                       90, "web never saw its Redis up")
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        assert redis.Redis.from_url(url, socket_timeout=5).ping()
        assert password not in run.log_tail(200)
        assert (root / ".k1" / "redis.conf").stat().st_mode & 0o077 == 0
    finally:
        run.stop(timeout=30)
    with pytest.raises(redis.ConnectionError):  # make run stops the Redis it started
        redis.Redis.from_url(url, socket_timeout=5).ping()
