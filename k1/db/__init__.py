"""Database access: one engine per process, sessions from it, Alembic migrations.

    from k1.db import session_scope
    with session_scope() as session:
        session.add(row)          # committed on exit, rolled back on error
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from k1.settings import get_settings

CONNECT_TIMEOUT = 5  # seconds: a database that is down fails a call fast (the DLQ spools)
# SQLSTATE classes of a statement the server refused for what it carries (data exception,
# integrity, syntax or access, program limit such as JSON nested too deep): sending it
# again later fails the same way. psycopg raises class 54 as an OperationalError.
REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "42", "54"})


class Base(DeclarativeBase):
    """Declarative base of every K1 table."""


def make_engine(url: str) -> Engine:
    """An engine for ``url``: pre-pinged pool for PostgreSQL, WAL mode for SQLite."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 15})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@functools.cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@functools.cache
def _session_factory() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def reading() -> Iterator[Connection]:
    """A connection for a single read statement, in autocommit: no BEGIN and COMMIT round
    trips around it (one statement sees one snapshot anyway).
    """
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        yield connection


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session committed when the block ends, rolled back if it raises."""
    with _session_factory().begin() as session:
        yield session


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or could not serve now
    (connection refused or lost, pool timeout, shutdown, out of resources, deadlock) --
    worth trying again later -- rather than that it refused what the statement carries.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return False
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return not (sqlstate and sqlstate[:2] in REFUSED_SQLSTATE_CLASSES)


def insert_or_skip(model: type[Base], *unique: str) -> postgresql.Insert | sqlite.Insert:
    """``INSERT ... ON CONFLICT (unique) DO NOTHING`` for the engine's dialect (K1 runs on
    PostgreSQL and SQLite, whose insert constructs both offer it).
    """
    builder = postgresql.insert if get_engine().dialect.name == "postgresql" else sqlite.insert
    return builder(model).on_conflict_do_nothing(index_elements=list(unique))
