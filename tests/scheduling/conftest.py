"""Scheduling fixtures: real ``k1 beat`` processes (supervisor + celery beat) on the
session's Redis, a schedule factory that cleans up, and readers of what beat recorded.

Beats here loop every second and hold a 5 s lock, so a standby takes over within
``HANDOVER_BOUND`` of the active beat's death.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import API, LOGS, k1_process
from tests.support import VENV_BIN, Process, wait_for

LOOP_INTERVAL = 1  # s, K1_BEAT_MAX_LOOP_INTERVAL for the test beats
LOCK_TIMEOUT = 5  # s, K1_BEAT_LOCK_TIMEOUT for the test beats
# The lock expires (<= LOCK_TIMEOUT), the standby's next try (<= LOOP_INTERVAL), its first
# loop (<= LOOP_INTERVAL), plus slack for a machine shared with other test suites.
HANDOVER_BOUND = LOCK_TIMEOUT + 2 * LOOP_INTERVAL + 5
BEAT_ENV = {"K1_BEAT_MAX_LOOP_INTERVAL": str(LOOP_INTERVAL),
            "K1_BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT)}
ACQUIRED = "beat: Acquired lock"


class Beat:
    """One ``k1 beat`` process; its log says when its celery beat holds the lock."""

    def __init__(self, name: str, **env: str) -> None:
        (LOGS / f"{name}.log").unlink(missing_ok=True)
        self.process: Process = k1_process(name, str(VENV_BIN / "k1"), "beat",
                                           env={**BEAT_ENV, **env})

    def start(self) -> Beat:
        self.process.start()
        return self

    def log(self) -> str:
        try:
            return self.process.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def acquisitions(self) -> int:
        return self.log().count(ACQUIRED)

    def wait_active(self, timeout: float = 30, times: int = 1) -> None:
        self.process.wait_until(lambda: self.acquisitions() >= times, timeout,
                                f"never acquired the beat lock ({times}x)")

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


@pytest.fixture
def beats(services: dict[str, object], unique: str) -> Iterator[Callable[[str], Beat]]:
    """``beats("a")`` starts a beat for this test (``beats("a", VAR="x")`` with more
    environment); all are stopped at its end."""
    started: list[Beat] = []

    def start(label: str, **env: str) -> Beat:
        beat = Beat(f"beat-{unique}-{label}", **env).start()
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()


@pytest.fixture(scope="module")
def module_beat(services: dict[str, object], worker: Process) -> Iterator[Beat]:
    """One beat for a whole module, active before its first test."""
    beat = Beat(f"beat-module-{int(time.time() * 1000)}").start()
    beat.wait_active()
    yield beat
    beat.stop()


@pytest.fixture
def operator_api(web: str, make_token) -> API:
    return API(web, make_token("root", "*"))


@pytest.fixture
def schedules(unique: str) -> Iterator[Callable[..., dict[str, Any]]]:
    """``schedules(every=2, ...)`` creates a schedule in the store (unique name, project
    acme, task flaky) and deletes it after the test."""
    from k1.scheduling import ScheduleNotFound, ScheduleStore

    store = ScheduleStore()
    names: list[str] = []

    def create(label: str = "s", **fields: Any) -> dict[str, Any]:
        body = {"name": f"t-{unique}-{label}", "task": "k1.tasks.demo.flaky",
                "project_id": "acme", **fields}
        names.append(body["name"])
        schedule = store.create(store.validate(body))
        assert schedule is not None
        return schedule.to_json()

    yield create
    for name in names:
        with contextlib.suppress(ScheduleNotFound):
            store.delete(name)


def fires(name: str, project_id: str | None = "acme") -> list[dict[str, Any]]:
    """The recorded fires of schedule ``name`` of ``project_id``, oldest first."""
    from k1.scheduling.entry import schedule_id
    from k1.scheduling.history import recent_fires

    return list(reversed(recent_fires(schedule_id(project_id, name))))


def wait_fires(name: str, count: int, timeout: float, after: int = 0,
               project_id: str | None = "acme") -> list[dict[str, Any]]:
    """Wait until ``count`` fires are recorded beyond the first ``after``; all fires."""
    def seen() -> list[dict[str, Any]]:
        return fires(name, project_id)

    return wait_for(lambda: len(seen()) >= after + count and seen(), timeout=timeout,
                    interval=0.1,
                    message=lambda: f"{name}: {len(seen()) - after} of {count} fires")
