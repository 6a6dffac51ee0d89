"""Flower, started against the test Redis, lists the worker and the tasks it ran."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import API, PORTS, k1_process
from tests.support import VENV_BIN

AUTH = ("ops", "flower-test-password")


@pytest.fixture(scope="module")
def flower(worker) -> str:
    url = f"http://127.0.0.1:{PORTS['flower']}"
    process = k1_process(
        "flower", str(VENV_BIN / "celery"), "-A", "k1.celery", "flower",
        f"--port={PORTS['flower']}", "--address=127.0.0.1",
        env={"FLOWER_BASIC_AUTH": ":".join(AUTH)},
    ).start()
    process.wait_until(lambda: requests.get(f"{url}/healthcheck", timeout=2).ok, 60,
                       "healthcheck never answered")
    # Flower only knows what happens after its event consumer connects: wait until the
    # worker's heartbeat events reach it before posting anything.
    process.wait_until(
        lambda: requests.get(f"{url}/api/workers", params={"status": "true"}, auth=AUTH,
                             timeout=2).json().get("worker@k1test"),
        30, "never received the worker's heartbeat events")
    yield url
    process.stop()


def test_flower_requires_its_basic_auth(flower: str) -> None:
    assert requests.get(f"{flower}/api/workers", timeout=5).status_code == 401


def test_flower_lists_the_worker_and_a_task_posted_to_the_api(flower: str, api: API) -> None:
    task_id = api.post("/api/tasks", json={"task": "k1.tasks.demo.flaky",
                                           "project_id": "acme"}).json()["task_id"]
    workers = requests.get(f"{flower}/api/workers", params={"refresh": "true"}, auth=AUTH,
                           timeout=10).json()
    assert "worker@k1test" in workers

    def seen_succeeded() -> dict | None:
        task = requests.get(f"{flower}/api/task/info/{task_id}", auth=AUTH, timeout=5)
        return task.json() if task.ok and task.json().get("state") == "SUCCESS" else None

    from tests.support import wait_for

    info = wait_for(seen_succeeded, timeout=30, interval=0.2,
                    message=f"Flower never showed {task_id} as SUCCESS")
    assert info["name"] == "k1.tasks.demo.flaky"
