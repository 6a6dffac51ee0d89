"""Helpers for the history tests: a recorder process, tasks read back from history."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import API, k1_process
from tests.support import VENV_BIN, Process, wait_for

CLAIM_IDLE = "2"  # s: a killed recorder's records are taken over within a test's patience


def start_recorder(name: str = "recorder", env: dict[str, str] | None = None) -> Process:
    return k1_process(name, str(VENV_BIN / "k1"), "history-recorder", "--batch", "50",
                      "--claim-idle", CLAIM_IDLE, env=env).start()


@pytest.fixture
def recorder(services: dict[str, object]) -> Iterator[Process]:
    """A recorder writing to the session's database (one at a time: they share a group)."""
    process = start_recorder()
    yield process
    process.stop()


def wait_history(api: API, task_id: str, done: Any, timeout: float = 60) -> dict[str, Any]:
    """``GET /api/tasks/<id>`` until ``done(body)`` holds."""
    last: list[Any] = [None]

    def probe() -> dict[str, Any] | None:
        response = api.get(f"/api/tasks/{task_id}")
        last[0] = response.json()
        return last[0] if response.ok and done(last[0]) else None

    return wait_for(probe, timeout=timeout, interval=0.2,
                    message=lambda: f"task {task_id}: history never matched; last {last[0]}")
