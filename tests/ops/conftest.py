"""Operations fixtures: a TLS Redis with a self-signed certificate, as managed Redis has."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import BASE, LOGS
from tests.support import Process, free_port

TLS_REDIS_PASSWORD = "tls-redis-password-for-tests"


class TLSRedis:
    """``redis-server`` speaking only TLS, password required, certificate self-signed."""

    def __init__(self, directory: Path) -> None:
        self.port, self.dir = free_port(), directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "redis.crt", directory / "redis.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(self.key), "-out", str(self.cert)],
            check=True, capture_output=True)
        argv = [shutil.which("redis-server") or "redis-server", "--port", "0",
                "--tls-port", str(self.port), "--bind", "127.0.0.1",
                "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
                "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no",
                "--requirepass", TLS_REDIS_PASSWORD, "--dir", str(directory),
                "--save", "", "--appendonly", "yes"]
        self.process = Process(f"redis-tls-{self.port}", argv, {}, LOGS)

    @property
    def url(self) -> str:
        """The URL as Heroku hands it out: rediss://, password, no certificate policy."""
        return f"rediss://:{TLS_REDIS_PASSWORD}@127.0.0.1:{self.port}/0"

    def start(self) -> TLSRedis:
        self.process.start()
        client = redis.Redis.from_url(self.url, ssl_cert_reqs="none", socket_timeout=5)
        self.process.wait_until(client.ping, 20, "did not answer PING over TLS")
        client.close()
        return self


@pytest.fixture(scope="session")
def tls_redis() -> Iterator[TLSRedis]:
    server = TLSRedis(BASE / "redis-tls").start()
    yield server
    server.process.stop()
