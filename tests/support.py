"""Real servers and processes for the tests: Redis, PostgreSQL, K1 processes.

Each server runs on a free loopback port with its data in a temporary directory and is
stopped at the end. Waits are bounded and fail with the process's log tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    probe: Callable[[], T], *, timeout: float, message: str | Callable[[], str],
    interval: float = 0.05,
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:  # the probe may fail until the thing is up
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    text = message() if callable(message) else message
    suffix = f" (last error: {last_error!r})" if last_error else ""
    raise AssertionError(f"timed out after {timeout}s: {text}{suffix}")


def run_k1(*args: str, env: Mapping[str, str] | None = None, cwd: Path = ROOT,
           inherit: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the venv's ``k1`` command: the tests' environment plus ``env`` (only ``env``
    with ``inherit=False``), output captured as text."""
    base = dict(os.environ) if inherit else {}
    return subprocess.run([str(VENV_BIN / "k1"), *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=timeout)


def control(service_url: str, **behaviour: Any) -> dict[str, Any]:
    """Tell the stand-in external service (k1/external_service.py) how to behave."""
    response = requests.post(f"{service_url}/_control", json=behaviour, timeout=5)
    response.raise_for_status()
    return response.json()


class Process:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path,
                 cwd: Path = ROOT) -> None:
        self.name, self.argv, self.env, self.cwd = name, list(argv), dict(env), cwd
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it while it runs
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            return
        assert self.popen is not None
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL the whole process group: a crash, not a shutdown."""
        if self.alive():
            assert self.popen is not None
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, probe: Callable[[], T], timeout: float, what: str) -> T:
        def message() -> str:
            state = "running" if self.alive() else f"exited with {self.popen.returncode}"
            return f"{self.name} ({state}) {what}; log tail:\n{self.log_tail()}"

        return wait_for(probe, timeout=timeout, message=message)


class RedisServer:
    """A throwaway ``redis-server`` (AOF on, so a restart keeps the data)."""

    def __init__(self, port: int, data_dir: Path, log_dir: Path) -> None:
        self.port, self.data_dir = port, data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server", "--port", str(port),
            "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always",
        ]
        self.process = Process(f"redis-{port}", argv, os.environ, log_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self) -> RedisServer:
        self.process.start()
        client = self.client()
        self.process.wait_until(client.ping, 20, "did not answer PING")
        client.close()
        return self

    def stop(self) -> None:
        self.process.stop()


class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's binaries) on a loopback port.

    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user.
    """

    def __init__(self, port: int, data_dir: Path, log_dir: Path) -> None:
        self.port, self.data_dir, self.log_dir = port, data_dir, log_dir
        self.bin = pg_bindir()
        self.log_path = log_dir / f"postgres-{port}.log"

    @property
    def url(self) -> str:
        return f"postgresql://k1@127.0.0.1:{self.port}/k1"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data_dir, "postgres", "postgres")
            shutil.chown(self.data_dir.parent, "postgres", "postgres")
            self.log_path.touch()
            shutil.chown(self.log_path, "postgres", "postgres")
        subprocess.run(
            self._as_owner([str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "k1",
                            "-A", "trust", "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True,
        )

    def start(self) -> PostgresServer:
        if not (self.data_dir / "PG_VERSION").exists():
            self.init()
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.data_dir} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        subprocess.run(
            self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60",
                            "-l", str(self.log_path), "-o", options, "start"]),
            check=True, capture_output=True,
        )
        wait_for(self._ready, timeout=30, message=f"PostgreSQL on {self.port} not ready")
        if not self._database_exists():
            subprocess.run(self._as_owner([str(self.bin / "createdb"), "-h", "127.0.0.1",
                                           "-p", str(self.port), "-U", "k1", "k1"]),
                           check=True, capture_output=True)
        return self

    def _ready(self) -> bool:
        return subprocess.run(
            [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        ).returncode == 0

    def _database_exists(self) -> bool:
        out = subprocess.run(
            self._as_owner([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "k1", "-d", "postgres", "-Atc",
                            "SELECT 1 FROM pg_database WHERE datname = 'k1'"]),
            capture_output=True, text=True, check=True,
        )
        return out.stdout.strip() == "1"

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real outage."""
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast",
                                "-w", "-t", "60", "stop"]),
                check=True, capture_output=True,
            )


def pg_bindir() -> Path:
    """Debian's versioned PostgreSQL binaries (newest installed)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found; `make test` installs them")
    return candidates[-1].parent
