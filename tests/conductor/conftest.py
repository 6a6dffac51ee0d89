"""Conductor fixtures: one real Conductor server per session (free port, temporary data
dir, SQLite), a Celery worker, a conductor worker and a web process wired to it.

The processes here use their own Redis database (``/1``) as broker, so that the
session's generic Celery worker (database 0, no Conductor configured) never takes a
bridged task; they share the session's PostgreSQL, where dead letters land.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from k1.conductor.client import ConductorClient
from k1.conductor.server import health_url, start_server, stop_server, wait_healthy
from tests.conftest import BASE, CONDUCTOR_JAR_CACHE, LOGS, k1_process
from tests.support import ROOT, VENV_BIN, Process, free_port, run_k1, wait_for

JAR_CACHE = CONDUCTOR_JAR_CACHE  # where scripts/setup.sh test fetched it
WORKFLOWS = ROOT / "workflows"
START_TIMEOUT = 180  # s; ~10 s on 2 idle cores, more with other suites running
WORKFLOW_TIMEOUT = 60  # s for a sample workflow to finish through the bridge


class ConductorServer:
    """The session's Conductor server; restartable on the same port and data."""

    def __init__(self, port: int, data_dir: Path) -> None:
        self.port, self.data_dir = port, data_dir
        self.log_path = LOGS / "conductor-server.log"
        self.process = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> ConductorServer:
        self.process = start_server(JAR_CACHE, self.port, self.data_dir,
                                    log_path=self.log_path, timeout=START_TIMEOUT)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_server(self.process)
            self.process = None

    def wait_healthy(self) -> None:
        wait_healthy(health_url(self.port), START_TIMEOUT, process=self.process,
                     log_path=self.log_path)


@pytest.fixture(scope="session")
def conductor_server() -> Iterator[ConductorServer]:
    server = ConductorServer(free_port(), BASE / "conductor").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def conductor_env(conductor_server: ConductorServer, services: dict[str, Any]) -> dict[str, str]:
    """Environment of the processes wired to Conductor (see the module docstring)."""
    broker = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/1"
    return {"REDIS_URL": broker, "CONDUCTOR_SERVER_URL": conductor_server.api_url,
            # A restart of the server must not keep the breaker open for a minute; a
            # deferred start waits up to 30 deferrals of this (150 s): a restart on a
            # loaded machine took ~100 s, more than the 90 s that 3 s allowed.
            "K1_BREAKER_RESET_TIMEOUT": "5", "K1_WORKFLOWS_DIR": str(WORKFLOWS)}


@pytest.fixture(scope="session")
def conductor(conductor_server: ConductorServer) -> ConductorClient:
    return ConductorClient(conductor_server.api_url)


@pytest.fixture(scope="session")
def bridge_redis(conductor_env: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(conductor_env["REDIS_URL"], decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def bridge_celery(conductor_env: dict[str, str]) -> Celery:
    """A Celery client for the bridge's broker (results, pings)."""
    url = conductor_env["REDIS_URL"]
    return Celery("k1-bridge-test", broker=url, backend=url)



@pytest.fixture(scope="session")
def registered(conductor_env: dict[str, str]) -> None:
    done = run_k1("workflows", "register", env=conductor_env)
    assert done.returncode == 0, done.stderr


# Package scope: its conductor worker polls the session's Conductor server, and must not
# take the tasks of a later package's platform (tests/ops runs workflows on it too).
@pytest.fixture(scope="package")
def bridge(conductor_env: dict[str, str], registered: None, external_service: str,
           bridge_celery: Celery) -> Iterator[dict[str, Process]]:
    """A Celery worker and a conductor worker, both on the bridge's broker."""
    hostname = "bridge@k1test"
    worker = k1_process("celery-bridge", str(VENV_BIN / "celery"), "-A", "k1.celery", "worker",
                        "--loglevel", "INFO", "--concurrency", "2", "--hostname", hostname,
                        "--without-mingle", "--without-gossip", env=conductor_env).start()
    poller = k1_process("conductor-worker", str(VENV_BIN / "k1"), "conductor-worker",
                        env=conductor_env).start()
    try:
        worker.wait_until(lambda: bridge_celery.control.ping(destination=[hostname],
                                                             timeout=0.5), 60,
                          "did not answer ping")
        poller.wait_until(lambda: "conductor worker polling" in _log(poller), 60,
                          "did not start polling")
        yield {"worker": worker, "poller": poller}
    finally:
        poller.stop()
        worker.stop()


@pytest.fixture(scope="package")
def conductor_web(conductor_env: dict[str, str], registered: None) -> Iterator[str]:
    """A web process wired to Conductor (the session's ``web`` fixture is not)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = k1_process("web-conductor", sys.executable, "-m", "k1.web",
                         env={**conductor_env, "PORT": str(port)}).start()
    try:
        process.wait_until(lambda: requests.get(f"{url}/api/health", timeout=2).ok, 60,
                           "health never answered 200")
        yield url
    finally:
        process.stop()


def _log(process: Process) -> str:
    try:
        return process.log_path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for_workflow(conductor: ConductorClient, workflow_id: str, *statuses: str,
                      timeout: float = WORKFLOW_TIMEOUT) -> dict[str, Any]:
    """The workflow once its status is one of ``statuses`` (default: any terminal one)."""
    wanted = statuses or ("COMPLETED", "FAILED", "TERMINATED", "TIMED_OUT")
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = conductor.get_workflow(workflow_id, include_tasks=True)
        return last if last.get("status") in wanted else None

    def describe() -> str:
        tasks = [(t.get("referenceTaskName"), t.get("status")) for t in last.get("tasks", [])]
        return (f"workflow {workflow_id} is {last.get('status')}, not {'/'.join(wanted)}; "
                f"tasks {tasks}; reason {last.get('reasonForIncompletion')!r}")

    return wait_for(probe, timeout=timeout, message=describe, interval=0.2)


def copy_workflows(tmp_path: Path, *names: str) -> Path:
    for name in names:
        shutil.copy(WORKFLOWS / f"{name}.json", tmp_path / f"{name}.json")
    return tmp_path


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


__all__ = ["copy_workflows", "wait_for_workflow", "write_json"]
