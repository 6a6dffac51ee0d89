"""Reachability of what K1 depends on: Redis, the database, Conductor.

    report = check_all()
    report["ok"]          # False when any configured dependency is down
"""

from __future__ import annotations

import time
from typing import Any

import requests
from sqlalchemy import text

from k1.connections import redis_from_url
from k1.db import get_engine
from k1.settings import get_settings, redis_error_fix

CHECK_TIMEOUT = 2.0  # seconds per dependency: health must answer even when all are down


def check_all() -> dict[str, Any]:
    """Every dependency's status; ``ok`` unless a configured one is down."""
    checks = {"redis": check_redis(), "database": check_database(),
              "conductor": check_conductor()}
    return {"ok": all(c["status"] != "down" for c in checks.values()), **checks}


def check_redis(url: str | None = None, *, detail: bool = False) -> dict[str, Any]:
    """Redis' status; with ``detail`` its version too. When down, ``fix`` says what to do."""
    # A client of its own with short timeouts: the shared one waits longer.
    client = redis_from_url(url or get_settings().redis_url)
    client.connection_pool.connection_kwargs.update(
        socket_timeout=CHECK_TIMEOUT, socket_connect_timeout=CHECK_TIMEOUT
    )
    found: dict[str, Any] = {}

    def probe() -> None:
        if detail:
            found["version"] = client.info("server")["redis_version"]
        else:
            client.ping()

    try:
        result = _timed(probe)
    finally:
        client.close()
    if result["status"] == "down":
        result["fix"] = redis_fix(result["error"])
    return {**result, **found}


def redis_fix(error: str) -> str:
    """What fixes a Redis connection failure, from its message (`k1 check`, health)."""
    return redis_error_fix(error) or "start Redis, or point REDIS_URL at a running one"


def check_database() -> dict[str, Any]:
    def ping() -> None:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))

    return _timed(ping)


def check_conductor() -> dict[str, Any]:
    settings = get_settings()
    if not settings.conductor_server_url:
        return {"status": "not configured"}
    health_url = settings.conductor_server_url.removesuffix("/api") + "/health"

    def ping() -> None:
        requests.get(health_url, timeout=CHECK_TIMEOUT).raise_for_status()

    return _timed(ping)


def _timed(probe: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        probe()
    except Exception as exc:  # any failure means "down"; the reason is reported
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "up", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
