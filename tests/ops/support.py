"""Helpers for the operations tests: a private copy of the repository's layout, the
Procfile under honcho with only the environment a Procfile host sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import psycopg

from tests.conftest import BASE, LOGS
from tests.support import ROOT, VENV_BIN, Process

# Shared read-only with the checkout; .env and .k1/ (local state) are the copy's own.
PRIVATE = {".env", ".k1", ".git", "artifacts"}


def mirror_repo(target: Path) -> Path:
    """A directory that looks like the checkout (symlinks) with its own .env and .k1/.

    scripts/run.sh works from the directory above its own, so running the mirror's copy
    exercises the real script without touching the developer's .env or Redis data.
    """
    target.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name not in PRIVATE:
            (target / entry.name).symlink_to(entry)
    (target / ".k1").mkdir()
    if (ROOT / ".k1" / "cache").is_dir():  # the Conductor jar, fetched once
        (target / ".k1" / "cache").symlink_to(ROOT / ".k1" / "cache")
    return target


def fresh_database(name: str) -> str:
    """An empty database on the session's PostgreSQL; its Heroku-style postgres:// URL."""
    admin = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        connection.execute(f"CREATE DATABASE {name}")
    return admin.replace("postgresql://", "postgres://").rsplit("/", 1)[0] + f"/{name}"


def procfile_env(*, redis_url: str, database_url: str, conductor_url: str, external_url: str,
                 secret: str, **extra: str) -> dict[str, str]:
    """Only what a Heroku app has: config vars and a PATH; no .env, no test settings."""
    return {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(BASE),
        "LANG": "C.UTF-8", "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "K1_SECRET_KEY": secret, "CONDUCTOR_SERVER_URL": conductor_url,
        "K1_EXTERNAL_SERVICE_URL": external_url, "K1_HOST": "127.0.0.1", **extra,
    }


def honcho(name: str, env: dict[str, str], port: int, *processes: str,
           concurrency: Mapping[str, int] | None = None) -> Process:
    """The Procfile under honcho, as `heroku local` / a Procfile host runs it: web on
    ``port`` (its n-th copy on ``port + n - 1``), ``concurrency`` copies of each type."""
    argv = [str(VENV_BIN / "honcho"), "start", "-e", "/dev/null", "-f", str(ROOT / "Procfile"),
            "-p", str(port)]
    if concurrency:
        argv += ["-c", ",".join(f"{kind}={count}" for kind, count in concurrency.items())]
    return Process(name, [*argv, *processes], env, LOGS)
