"""Alembic, configured from the package (no alembic.ini): ``k1 db upgrade``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from k1.settings import get_settings

# PostgreSQL advisory lock key held while migrating: Heroku may run the release phase of
# two deploys at once, and two concurrent upgrades would both create the same tables.
MIGRATION_LOCK_KEY = 0x4B31_0DB0


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "k1.db:migrations")
    config.attributes["database_url"] = database_url or get_settings().database_url
    return config


def upgrade(revision: str = "head", database_url: str | None = None) -> None:
    """Apply migrations up to ``revision``; concurrent callers wait for each other."""
    url = database_url or get_settings().database_url
    with _migration_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock (no-op on SQLite: one local process)."""
    if not url.startswith("postgresql"):
        yield
        return
    from k1.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            # Session-level: held until unlocked or the connection dies (a killed release
            # phase never leaves it behind).
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()


def current(database_url: str | None = None) -> None:
    command.current(alembic_config(database_url))
