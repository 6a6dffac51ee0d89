"""Session fixtures: real Redis, PostgreSQL, Celery worker, web process, external service.

Ports are chosen and the environment is set when this module is imported, before any
test imports K1 (whose settings are read from the environment once); the servers start
lazily, when a test first asks for them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from k1.settings import conductor_cache_dir
from tests.support import (
    ROOT,
    VENV_BIN,
    PostgresServer,
    Process,
    RedisServer,
    free_port,
    wait_for,
)

BASE = Path(tempfile.mkdtemp(prefix="k1-tests-"))
BASE.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data dir
# One log folder per test session: sessions may run side by side.
LOGS = ROOT / "artifacts" / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
LOGS.mkdir(parents=True, exist_ok=True)
PORTS = {name: free_port() for name in ("redis", "postgres", "web", "external", "flower")}
SECRET_KEY = "test-secret-" + uuid.uuid4().hex + uuid.uuid4().hex
# The one Conductor jar cache, where scripts/setup.sh test fetched it: read before
# K1_DATA_DIR points elsewhere below, and pinned for every process the tests start.
CONDUCTOR_JAR_CACHE = ROOT / conductor_cache_dir(os.environ)

os.environ.update(
    REDIS_URL=f"redis://127.0.0.1:{PORTS['redis']}/0",
    DATABASE_URL=f"postgresql://k1@127.0.0.1:{PORTS['postgres']}/k1",
    K1_SECRET_KEY=SECRET_KEY,
    K1_DATA_DIR=str(BASE / "data"),
    K1_CONDUCTOR_CACHE=str(CONDUCTOR_JAR_CACHE),
    K1_EXTERNAL_SERVICE_URL=f"http://127.0.0.1:{PORTS['external']}",
    K1_HOST="127.0.0.1",
    PORT=str(PORTS["web"]),
    K1_LOG_LEVEL="INFO",
    K1_BREAKER_RESET_TIMEOUT="3",  # breakers half-open within a test's patience
)
os.environ.pop("CONDUCTOR_SERVER_URL", None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    shutil.rmtree(BASE, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(PORTS["redis"], BASE / "redis", LOGS).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(PORTS["postgres"], BASE / "pg" / "data", LOGS).start()
    from k1.db.migrate import upgrade

    upgrade()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, to stop and start (AOF on: a restart keeps the data)."""
    server = RedisServer(free_port(), tmp_path / "redis", LOGS).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def services(redis_server: RedisServer, postgres: PostgresServer) -> dict[str, object]:
    """Redis and PostgreSQL up, schema migrated."""
    return {"redis": redis_server, "postgres": postgres}


def k1_process(name: str, *argv: str, env: dict[str, str] | None = None) -> Process:
    return Process(name, argv, {**os.environ, **(env or {})}, LOGS)


def celery_worker(name: str, *, concurrency: int = 2, queues: str | None = None,
                  env: dict[str, str] | None = None, include: str | None = None) -> Process:
    """A real prefork Celery worker process, started and answering pings; ``env`` overrides
    the session's environment (e.g. a test's own DATABASE_URL); ``include`` adds task
    modules (tests' own tasks). Without ``queues`` it consumes celeryconfig's task_queues.
    """
    from k1.celery import app

    hostname = f"{name}@k1test"
    argv = [str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--hostname", hostname, "--without-mingle",
            "--without-gossip"]
    if queues:
        argv += ["--queues", queues]
    if include:  # extra task modules (tests' own tasks)
        argv += ["--include", include]
    worker = k1_process(name, *argv, env=env).start()
    worker.wait_until(
        lambda: app.control.ping(destination=[hostname], timeout=0.5), 60, "did not answer ping"
    )
    return worker


@pytest.fixture(scope="session")
def worker(services: dict[str, object]) -> Iterator[Process]:
    # It consumes the default queue, where the flow tests send their own tasks too: it
    # must know them, or it drops the ones it takes as unregistered.
    process = celery_worker("worker", include="tests.flow.tasks")
    yield process
    process.stop()


@pytest.fixture(scope="session")
def external_service() -> Iterator[str]:
    url = os.environ["K1_EXTERNAL_SERVICE_URL"]
    process = k1_process("external-service", str(VENV_BIN / "k1"), "external-service",
                         "--port", str(PORTS["external"])).start()
    process.wait_until(lambda: requests.get(f"{url}/health", timeout=1).ok, 20, "not serving")
    yield url
    process.stop()


@pytest.fixture(scope="session")
def web(services: dict[str, object]) -> Iterator[str]:
    """The real web process (eventlet), its base URL."""
    url = f"http://127.0.0.1:{PORTS['web']}"
    process = k1_process("web", sys.executable, "-m", "k1.web").start()
    process.wait_until(lambda: requests.get(f"{url}/api/health", timeout=2).ok, 60,
                       "health never answered 200")
    yield url
    process.stop()


@pytest.fixture(scope="session")
def make_token():
    from k1.auth import create_token

    def make(user: str = "ada", *projects: str, ttl: int = 600) -> str:
        return create_token(user, projects or ("acme",), secret=SECRET_KEY, ttl=ttl)

    return make


class API:
    """``requests`` against the web process with a bearer token."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def __getattr__(self, method: str):
        def call(path: str, **kwargs):
            kwargs.setdefault("timeout", 10)
            return self.session.request(method.upper(), self.base + path, **kwargs)

        return call


@pytest.fixture
def api(web: str, make_token) -> API:
    return API(web, make_token("ada", "acme"))


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


__all__ = ["API", "celery_worker", "k1_process", "wait_for"]
