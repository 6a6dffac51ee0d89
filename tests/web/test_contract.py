"""The API against its own description: schemathesis, as an outside client, sends generated
valid and invalid requests to every route of ``GET /api/openapi.json`` on a real web
process and checks each answer: no 5xx, status codes, content types, headers and bodies as
described, bad input refused with a 4xx, protected routes refused without a token.

It runs once with an operator token and once with a project token. The web process has a
database and a Redis database of its own, so that generated replays, deletions and resets
touch nothing the other tests rely on; tasks it starts land in a queue no worker reads.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import LOGS, k1_process
from tests.support import VENV_BIN, free_port

CONFIG = Path(__file__).with_name("schemathesis.toml")
CONTRACT_DB = "k1_contract"
CONTRACT_REDIS_DB = 7  # of the session's Redis server
MAX_EXAMPLES = 30  # per operation and phase: the two runs stay within ~3 minutes here


@pytest.fixture(scope="module")
def contract_web(services: dict[str, Any]) -> Iterator[str]:
    from k1.db.migrate import upgrade

    postgres = services["postgres"]
    subprocess.run(postgres._as_owner([
        str(postgres.bin / "createdb"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
        "k1", CONTRACT_DB]), check=True, capture_output=True)
    database_url = postgres.url.rsplit("/", 1)[0] + f"/{CONTRACT_DB}"
    upgrade(database_url=database_url)
    port = free_port()
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + f"/{CONTRACT_REDIS_DB}"
    process = k1_process("web-contract", sys.executable, "-m", "k1.web", env={
        "PORT": str(port), "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "K1_API_WRITE_LIMIT": "1000/second",  # generated writes are not a flood
        # Configured but unreachable: starts are deferred (202), lists say "unknown".
        "CONDUCTOR_SERVER_URL": f"http://127.0.0.1:{free_port()}/api",
    }).start()
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: requests.get(f"{url}/api/openapi.json", timeout=2).ok, 60,
                       "never served /api/openapi.json")  # health: 503, Conductor is down
    yield url
    process.stop()


def test_the_description_is_openapi_3_1_and_covers_every_route(contract_web: str) -> None:
    spec = requests.get(f"{contract_web}/api/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    operations = {(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item}
    assert operations >= {
        ("GET", "/api/health"), ("POST", "/api/tasks"), ("GET", "/api/tasks/{task_id}"),
        ("GET", "/api/dlq/stats"), ("GET", "/api/dlq"), ("GET", "/api/dlq/{letter_id}"),
        ("POST", "/api/dlq/{letter_id}/replay"), ("POST", "/api/dlq/replay"),
        ("DELETE", "/api/dlq/{letter_id}"), ("GET", "/api/scheduler/jobs"),
        ("POST", "/api/scheduler/jobs"), ("GET", "/api/scheduler/jobs/{name}"),
        ("PATCH", "/api/scheduler/jobs/{name}"), ("DELETE", "/api/scheduler/jobs/{name}"),
        ("POST", "/api/scheduler/jobs/{name}/run"), ("GET", "/api/breakers"),
        ("POST", "/api/breakers/{name}/reset"), ("GET", "/api/workflows"),
        ("POST", "/api/workflows/{name}/start"), ("GET", "/api/metrics"), ("GET", "/metrics"),
        ("GET", "/api/openapi.json"), ("POST", "/api/auth/exchange"),
    }
    new_task = spec["paths"]["/api/tasks"]["post"]
    assert new_task["requestBody"]["content"]["application/json"]["schema"]
    assert {"202", "400", "401", "403", "429", "503"} <= set(new_task["responses"])
    assert spec["paths"]["/api/health"]["get"]["security"] == []  # no token needed
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


@pytest.mark.parametrize("projects", [("*",), ("acme",)], ids=["operator", "project"])
def test_generated_requests_get_described_answers_and_no_5xx(
        contract_web: str, make_token, projects: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    token = make_token("contract", *projects, ttl=900)
    name = "operator" if "*" in projects else "project"
    report = LOGS / f"schemathesis-{name}.txt"
    argv = [str(VENV_BIN / "schemathesis"), "--config-file", str(CONFIG), "--no-color", "run",
            f"{contract_web}/api/openapi.json",
            "--max-examples", str(MAX_EXAMPLES), "--seed", "1",
            "--phases", "examples,coverage,fuzzing", "--workers", "2",
            "--request-timeout", "20", "--header", f"Authorization: Bearer {token}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          cwd=LOGS)  # its .schemathesis cache stays with the logs
    report.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, f"schemathesis found problems (all of it in {report}):\n" + (
        done.stdout[-6000:])
