"""Helpers for the operations tests: a private copy of the repository's layout."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from tests.support import ROOT

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
