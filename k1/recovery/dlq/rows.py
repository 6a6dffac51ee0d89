"""Dead letters as database rows: insert, read, page, delete, retention.

Only this module and :mod:`.stats` speak SQL about ``dead_letters``; the counts in
``dlq_counts`` follow every statement here by themselves (the triggers of migration 0002).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from k1.db import insert_or_skip, session_scope
from k1.recovery.dlq.filters import LETTER_PAGES, LetterFilter
from k1.recovery.dlq.models import DeadLetter, DeadLetterCount, DepthSnapshot

RETENTION_BATCH = 10_000  # rows deleted per statement, to keep locks short

# What a letter that leaves these out stores in them (NOT NULL columns).
DEFAULTS: dict[str, Any] = {"status": "dead", "replay_count": 0, "args": [], "kwargs": {},
                            "breaker_states": {}, "exception_message": "", "traceback": ""}


class LetterNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Inserted:
    """A row the insert wrote (a duplicate of an earlier attempt is not one)."""

    letter_id: int
    task_id: str
    attempts: int


def insert_rows(rows: Sequence[dict[str, Any]]) -> list[Inserted]:
    """Insert storable rows (:func:`.storable.storable`) in one transaction; a row of a
    task attempt already stored is skipped. Raises what the database raises.
    """
    rows = [{**DEFAULTS, **row} for row in rows]
    if not rows:
        return []
    # One cached statement, executed for many rows ("insertmanyvalues" batching).
    statement = insert_or_skip(DeadLetter, "task_id", "attempts").returning(
        DeadLetter.id, DeadLetter.task_id, DeadLetter.attempts)
    with session_scope() as session:
        return [Inserted(*row) for row in session.execute(statement, rows)]


def page(filters: LetterFilter, *, limit: int = 50,
         cursor: str | None = None) -> tuple[list[DeadLetter], str | None]:
    """A page of letters, newest death first, and the cursor of the next page."""
    return LETTER_PAGES.page(select(DeadLetter).where(*filters.where()), limit=limit,
                             cursor=cursor)


def get(letter_id: int, scope: frozenset[str] | None = None) -> DeadLetter:
    with session_scope() as session:
        letter = session.get(DeadLetter, letter_id)
    if letter is None or not in_scope(letter, scope):
        raise LetterNotFound(letter_id)
    return letter


def count(filters: LetterFilter) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).where(*filters.where())) or 0)


def discard(letter_id: int, scope: frozenset[str] | None = None) -> DeadLetter:
    """Mark a letter discarded: it leaves the queue but stays for forensics."""
    with session_scope() as session:
        letter = session.get(DeadLetter, letter_id, with_for_update=True)
        if letter is None or not in_scope(letter, scope):
            raise LetterNotFound(letter_id)
        letter.status = "discarded"
    return letter


def purge(filters: LetterFilter) -> int:
    """Delete the matching letters for good; returns how many."""
    deleted = 0
    for batch in id_batches(filters, RETENTION_BATCH):
        with session_scope() as session:
            deleted += _delete(session, batch)
    return deleted


def id_batches(filters: LetterFilter, size: int) -> Iterator[list[int]]:
    """Ids of matching letters in ascending batches (stable while rows change)."""
    last_id = 0
    while True:
        with session_scope() as session:
            batch = list(session.scalars(
                select(DeadLetter.id).where(*filters.where(), DeadLetter.id > last_id)
                .order_by(DeadLetter.id).limit(size)))
        if not batch:
            return
        yield batch
        last_id = batch[-1]


def enforce_retention(*, max_age: timedelta, max_rows: int) -> dict[str, int]:
    """Delete letters older than ``max_age``, then the oldest beyond ``max_rows``."""
    cutoff = datetime.now(UTC) - max_age
    by_age = by_count = 0
    with session_scope() as session:
        while True:
            oldest = select(DeadLetter.id).where(DeadLetter.died_at < cutoff).limit(
                RETENTION_BATCH)
            removed = _delete(session, oldest)
            by_age += removed
            if removed < RETENTION_BATCH:
                break
        excess = (session.scalar(select(func.count()).select_from(DeadLetter)) or 0) - max_rows
        while excess > 0:
            oldest = (select(DeadLetter.id)
                      .order_by(DeadLetter.died_at, DeadLetter.id)
                      .limit(min(excess, RETENTION_BATCH)))
            removed = _delete(session, oldest)
            by_count += removed
            excess -= removed
            if not removed:
                break
        session.execute(delete(DepthSnapshot).where(DepthSnapshot.taken_at < cutoff))
        # Combinations with no dead letter left; a letter that arrives for one later
        # simply inserts it again.
        session.execute(delete(DeadLetterCount).where(DeadLetterCount.dead == 0))
    return {"expired": by_age, "over_limit": by_count}


def _delete(session: Session, ids: Any) -> int:
    """Delete the letters whose id is in ``ids`` (a list or a subquery); how many."""
    result = session.execute(delete(DeadLetter).where(DeadLetter.id.in_(ids)))
    return cast("CursorResult[Any]", result).rowcount or 0


def in_scope(letter: DeadLetter, scope: frozenset[str] | None) -> bool:
    return scope is None or letter.project_id in scope


def letter_as_dict(letter: DeadLetter, *, full: bool = True) -> dict[str, Any]:
    """The JSON form of a letter (the API's and the CLI's); ``full`` adds the traceback."""
    body = {column.name: getattr(letter, column.name) for column in DeadLetter.__table__.columns}
    for key in ("first_failed_at", "died_at", "replayed_at"):
        body[key] = iso(body[key])
    if not full:
        body.pop("traceback")
    return body


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive UTC datetimes
        value = value.replace(tzinfo=UTC)
    return value.isoformat()
