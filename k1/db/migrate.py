"""Alembic, configured from the package (no alembic.ini): ``k1 db upgrade``."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from k1.settings import get_settings


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "k1.db:migrations")
    config.attributes["database_url"] = database_url or get_settings().database_url
    return config


def upgrade(revision: str = "head", database_url: str | None = None) -> None:
    """Apply migrations up to ``revision``."""
    command.upgrade(alembic_config(database_url), revision)


def current(database_url: str | None = None) -> None:
    command.current(alembic_config(database_url))
