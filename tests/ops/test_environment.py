"""The environment decides, everywhere: an exported variable always wins over .env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from k1.auth import create_token
from tests.conftest import LOGS
from tests.ops.support import mirror_repo
from tests.support import Process, free_port, run_k1

ENV_KEY = "exported-secret-" + "e" * 40
DOTENV_KEY = "dotenv-secret-" + "d" * 40



def test_k1_takes_from_dotenv_only_what_the_environment_leaves_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"K1_SECRET_KEY={DOTENV_KEY}\nK1_DLQ_MAX_ROWS=77\n"
                                   "FLOWER_BASIC_AUTH='admin:it s quoted'\n")
    env = {**os.environ, "K1_SECRET_KEY": ENV_KEY}
    env.pop("FLOWER_BASIC_AUTH", None)
    done = run_k1("env", "--export", cwd=tmp_path, env=env, inherit=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "export K1_DLQ_MAX_ROWS=77", "export FLOWER_BASIC_AUTH='admin:it s quoted'",
    ]
    token = run_k1("token", "create", "--user", "ada", "--project", "p", cwd=tmp_path,
                   env=env, inherit=False)
    from k1.auth import verify_token

    assert verify_token(token.stdout.strip(), secret=ENV_KEY).user_id == "ada"


@pytest.mark.slow
def test_make_run_processes_use_the_exported_secret_not_dotenvs(
    services: dict[str, object], tmp_path: Path,
) -> None:
    """The issue's case: K1_SECRET_KEY exported, another in .env; `make run`'s web process
    and `k1 token create` must agree on the exported one."""
    root = mirror_repo(tmp_path / "k1")
    (root / ".env").write_text(f"K1_SECRET_KEY={DOTENV_KEY}\nK1_HOST=127.0.0.1\n"
                               f"PORT=1\n")  # an exported PORT wins over this one too
    port = free_port()
    env = {**os.environ, "K1_SECRET_KEY": ENV_KEY, "PORT": str(port)}
    run = Process("make-run-env", [str(root / "scripts" / "run.sh"), "web"], env, LOGS,
                  cwd=root).start()
    base = f"http://127.0.0.1:{port}"
    try:
        # make run points CONDUCTOR_SERVER_URL at a local server this test does not start,
        # so health may say 503; Redis and the database must be up.
        run.wait_until(
            lambda: requests.get(f"{base}/api/health", timeout=2).json()["redis"]["status"]
            == "up", 90, "web never answered on the exported PORT")
        made = run_k1("token", "create", "--user", "ada", "--project", "acme", cwd=root,
                      env=env, inherit=False)
        assert made.returncode == 0, made.stderr

        def status(token: str) -> int:
            return requests.get(f"{base}/api/dlq/stats", timeout=10,
                                headers={"Authorization": f"Bearer {token}"}).status_code

        assert status(made.stdout.strip()) == 200
        assert status(create_token("ada", ["acme"], secret=DOTENV_KEY, ttl=60)) == 401
    finally:
        run.stop(timeout=30)
