"""Keyset paging, newest first: a page of rows after an opaque cursor, and the next cursor.

    LETTER_PAGES = Keyset(DeadLetter.died_at, DeadLetter.id, parse_key=bounded_int(MAX_ID),
                          error=FilterError)
    rows, next_cursor = LETTER_PAGES.page(select(DeadLetter).where(...), limit=50,
                                          cursor=request_cursor)

Rows come in (time, key) descending order, the key breaking ties between rows of the same
time. The next page holds the rows strictly after the last one shown,
``(time, key) < (its time, its key)``, so rows written meanwhile never shift a page and an
index ending in (time, key) serves every page at the same cost. The cursor is
``"<time, ISO-8601>|<key>"`` in URL-safe base64 without padding: opaque to clients, and
the same for the dead letters and task history since they were first paged.

A cursor this module did not issue (not base64, no time, a key the column cannot hold)
raises ``error`` (:class:`InvalidCursor` unless the caller names its own, so that each
route keeps its error type) with the message ``cursor: not a cursor this API issued: …``,
before any query.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute

from k1.db import session_scope

R = TypeVar("R")
SEPARATOR = "|"  # between the time and the key; never in an ISO-8601 time


class InvalidCursor(ValueError):
    """A cursor that no page of this API issued."""


def text_key(text: str) -> str:
    """A text key (a task id): anything but NUL, which PostgreSQL text cannot hold."""
    if "\x00" in text:
        raise ValueError("NUL in a text key")
    return text


def bounded_int(maximum: int) -> Callable[[str], int]:
    """An integer key from 1 to ``maximum`` (a BIGINT id: past it a cursor names no row)."""
    def parse(text: str) -> int:
        value = int(text)
        if not 0 < value <= maximum:
            raise ValueError(f"{value} is out of range")
        return value

    return parse


@dataclass(frozen=True)
class Keyset:
    """Pages of a table newest first by ``time``, ties broken by ``key`` (both columns of
    the mapped class paged). ``parse_key`` turns a cursor's key text back into a value
    (ValueError: not one); ``error`` is the exception a bad cursor raises.
    """

    time: InstrumentedAttribute[Any]
    key: InstrumentedAttribute[Any]
    parse_key: Callable[[str], Any] = text_key
    error: type[Exception] = InvalidCursor

    def encode(self, row: Any) -> str:
        """The cursor of the page after ``row``."""
        raw = f"{getattr(row, self.time.key).isoformat()}{SEPARATOR}{getattr(row, self.key.key)}"
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def decode(self, cursor: str) -> tuple[datetime, Any]:
        """The (time, key) of the row a cursor follows; ``error`` if it is none of ours."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            time_text, key_text = raw.split(SEPARATOR, 1)
            at, key = datetime.fromisoformat(time_text), self.parse_key(key_text)
        except (ValueError, UnicodeDecodeError):
            raise self.error(f"cursor: not a cursor this API issued: {cursor!r}") from None
        return (at if at.tzinfo else at.replace(tzinfo=UTC)), key

    def after(self, cursor: str | None) -> ColumnElement[bool] | None:
        """Rows after ``cursor`` in the pages' order; None for the first page."""
        if not cursor:
            return None
        at, key = self.decode(cursor)
        return tuple_(self.time, self.key) < tuple_(at, key)

    def select(self, statement: Select[R], *, limit: int,
               cursor: str | None = None) -> Select[R]:
        """``statement`` narrowed to the page after ``cursor``, ordered, with one row more
        than ``limit``: that row, when there is one, says a next page exists."""
        after = self.after(cursor)
        if after is not None:
            statement = statement.where(after)
        return statement.order_by(self.time.desc(), self.key.desc()).limit(limit + 1)

    def cut(self, rows: Sequence[R], limit: int) -> tuple[list[R], str | None]:
        """The page (``limit`` rows of what :meth:`select` read) and the next cursor."""
        next_cursor = self.encode(rows[limit - 1]) if len(rows) > limit else None
        return list(rows[:limit]), next_cursor

    def page(self, statement: Select[R], *, limit: int,
             cursor: str | None = None) -> tuple[list[R], str | None]:
        """Read the page of ``statement`` (its filters) after ``cursor``, and the next
        cursor (None on the last page)."""
        query = self.select(statement, limit=limit, cursor=cursor)
        with session_scope() as session:
            rows = list(session.scalars(query))
        return self.cut(rows, limit)
