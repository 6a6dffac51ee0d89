"""``DeadLetterStore``: the one way in and out of the dead-letter queue.

    store = DeadLetterStore()
    store.record(fields)                    # idempotent; spooled in Redis if the DB is down
    page, cursor = store.query(LetterFilter(task="k1.tasks.demo.flaky"), limit=50)
    store.replay(letter_id)                 # re-sends the task, marks the letter replayed
    store.replay(letter_id, edit=Edit(kwargs={...}, user_id="ada"))  # with edited arguments
    store.stats()                           # {depth, by_task, by_exception, oldest_at, ...}

A narrow façade over the modules that each change for one reason -- :mod:`.storable`
(what the database accepts), :mod:`.rows` (SQL), :mod:`.stats` (figures), :mod:`.spool`
(Redis, outages), :mod:`.quarantine` (refused letters), :mod:`.replay` (Celery) -- so the
API, the CLI, the tasks and ``K1Task.on_failure`` use one object. It announces every change
with a ``dlq_changed`` event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from k1.db import is_unreachable
from k1.events import emit
from k1.recovery.dlq import quarantine, replay, rows, spool, stats
from k1.recovery.dlq.filters import LetterFilter
from k1.recovery.dlq.models import DeadLetter
from k1.recovery.dlq.replay import (
    Edit,
    EditInvalid,
    EditNotAllowed,
    Offload,
    ReplayRefused,
    in_this_thread,
)
from k1.recovery.dlq.rows import Inserted, LetterNotFound, letter_as_dict
from k1.recovery.dlq.spool import SPOOL_KEY
from k1.recovery.dlq.storable import storable

__all__ = ["SPOOL_KEY", "DeadLetterStore", "Edit", "EditInvalid", "EditNotAllowed",
           "LetterNotFound", "Recorded", "ReplayRefused", "letter_as_dict"]

log = logging.getLogger(__name__)

# A database that blinks (a restart, a failover, a dropped pooled connection) gets a
# moment before the letter goes to the spool: 3 tries over ~0.3 s, short enough for a
# worker's on_failure.
WRITE_ATTEMPTS = 3
WRITE_WAIT = wait_exponential(multiplier=0.1, max=1)


@dataclass(frozen=True)
class Recorded:
    outcome: str  # "written", "duplicate", "spooled" or "quarantined"
    letter_id: int | None = None


@retry(stop=stop_after_attempt(WRITE_ATTEMPTS), wait=WRITE_WAIT,
       retry=retry_if_exception(is_unreachable), reraise=True)
def _write(row: dict[str, Any]) -> list[Inserted]:
    return rows.insert_rows([row])


class DeadLetterStore:
    """Dead letters in the database, with a Redis spool for database outages."""

    # -- writing ---------------------------------------------------------------------

    def record(self, fields: dict[str, Any]) -> Recorded:
        """Write one letter; a second write of the same task attempt is a no-op.

        What the database would refuse is repaired first (:mod:`.storable`). If the
        database cannot be reached the letter goes to the Redis spool, which
        :meth:`drain_spool` empties once it can; if it refuses the letter all the same, the
        letter is quarantined. Either way nothing waits behind it.
        """
        row = storable(fields)
        try:
            inserted = _write(row)
        except SQLAlchemyError as exc:
            return self._keep(row, exc)
        if not inserted:
            return Recorded("duplicate")
        self._announce("added", inserted[0].letter_id, row)
        return Recorded("written", inserted[0].letter_id)

    def _keep(self, row: dict[str, Any], exc: SQLAlchemyError) -> Recorded:
        """The letter the database did not take: spooled if it was unreachable, else
        quarantined (spooled after all if the quarantine finds it unreachable).
        """
        if not is_unreachable(exc):
            log.error("the database refused the dead letter of %s (%s); quarantining it",
                      row.get("task_id"), type(exc).__name__)
            try:
                quarantine.quarantine(spool.dump(row).encode(), f"{type(exc).__name__}: {exc}",
                                      row)
                return Recorded("quarantined")
            except SQLAlchemyError as again:
                if not is_unreachable(again):
                    raise
                exc = again
        log.error("database unavailable (%s); spooling dead letter of %s",
                  type(exc).__name__, row.get("task_id"))
        spool.push(row)
        return Recorded("spooled")

    def record_many(self, letters: list[dict[str, Any]]) -> list[int]:
        """Write many letters in one statement (no spool: the caller keeps them on error);
        returns the ids of the rows written (duplicates are skipped).
        """
        inserted = rows.insert_rows([storable(fields) for fields in letters])
        if inserted:
            emit("dlq_changed", type="added", count=len(inserted))
        return [item.letter_id for item in inserted]

    def spool_depth(self) -> int:
        return spool.depth()

    def drain_spool(self) -> spool.Drained:
        """Move spooled letters into the database (see :func:`.spool.drain`)."""

        def announce(written: spool.Written) -> None:
            for inserted, row in written:
                self._announce("added", inserted.letter_id, row)

        return spool.drain(announce)

    # -- reading ---------------------------------------------------------------------

    def query(self, filters: LetterFilter, *, limit: int = 50,
              cursor: str | None = None) -> tuple[list[DeadLetter], str | None]:
        """A page of letters, newest death first, and the cursor of the next page."""
        return rows.page(filters, limit=limit, cursor=cursor)

    def get(self, letter_id: int, scope: frozenset[str] | None = None) -> DeadLetter:
        return rows.get(letter_id, scope)

    def count(self, filters: LetterFilter) -> int:
        return rows.count(filters)

    def stats(self, scope: frozenset[str] | None = None) -> dict[str, Any]:
        """Depth, its split by task and exception, oldest death, daily average depth."""
        return stats.stats(scope)

    def summary(self, scope: frozenset[str] | None = None) -> dict[str, Any]:
        """Depth, oldest death and daily average only: what the metrics need."""
        return stats.summary(scope)

    def quarantined(self, scope: frozenset[str] | None = None, *,
                    limit: int = 50) -> list[dict[str, Any]]:
        """Letters the database refused even repaired, newest first."""
        return quarantine.listing(scope, limit=limit)

    def quarantine_count(self, scope: frozenset[str] | None = None) -> int:
        return quarantine.count(scope)

    # -- operator actions --------------------------------------------------------------

    def replay(self, letter_id: int, *, force: bool = False,
               scope: frozenset[str] | None = None, edit: Edit | None = None,
               offload: Offload = in_this_thread) -> DeadLetter:
        """Send the letter's task again (same args, kwargs, project, idempotency key;
        ``edit``: other arguments, checked like a new submission) and mark the letter
        replayed with the new task id. ``offload`` runs its database steps (the web
        process: :func:`k1.web.offload.blocking`); the task is sent from this thread.
        """
        letter = replay.replay(letter_id, force=force, scope=scope, edit=edit,
                               offload=offload)
        self._announce("replayed", letter.id, _fields_of(letter),
                       replay_task_id=letter.replay_task_id,
                       edited=list(edit.fields) if edit else [])
        return letter

    def replay_matching(self, filters: LetterFilter, *, force: bool = False,
                        progress: Callable[[int], None] | None = None,
                        offload: Offload = in_this_thread) -> list[str]:
        """Replay every letter matching ``filters`` (``offload``: as :meth:`replay`);
        returns the new task ids."""
        task_ids = replay.replay_matching(filters, force=force, progress=progress,
                                          offload=offload)
        if task_ids:
            emit("dlq_changed", type="replayed", count=len(task_ids),
                 project_id=filters.project_id)
        return task_ids

    def discard(self, letter_id: int, scope: frozenset[str] | None = None) -> DeadLetter:
        """Mark a letter discarded: it leaves the queue but stays for forensics."""
        letter = rows.discard(letter_id, scope)
        self._announce("discarded", letter.id, _fields_of(letter))
        return letter

    def purge(self, filters: LetterFilter) -> int:
        """Delete the matching letters for good; returns how many."""
        deleted = rows.purge(filters)
        if deleted:
            emit("dlq_changed", type="purged", count=deleted, project_id=filters.project_id)
        return deleted

    # -- housekeeping ----------------------------------------------------------------

    def enforce_retention(self, *, max_age: timedelta, max_rows: int) -> dict[str, int]:
        """Delete letters older than ``max_age``, then the oldest beyond ``max_rows``."""
        removed = rows.enforce_retention(max_age=max_age, max_rows=max_rows)
        if removed["expired"] or removed["over_limit"]:
            emit("dlq_changed", type="purged",
                 count=removed["expired"] + removed["over_limit"], reason="retention")
        return removed

    def snapshot_depth(self) -> int:
        """Record the current depth, in total and per project; returns the total."""
        return stats.snapshot_depth()

    # -- events ----------------------------------------------------------------------

    def _announce(self, change: str, letter_id: int, fields: dict[str, Any],
                  **extra: Any) -> None:
        emit("dlq_changed", type=change, letter_id=letter_id, task_id=fields.get("task_id"),
             task_name=fields.get("task_name"), project_id=fields.get("project_id"),
             user_id=fields.get("user_id"), exception=fields.get("exception_type"), **extra)


def _fields_of(letter: DeadLetter) -> dict[str, Any]:
    return {"task_id": letter.task_id, "task_name": letter.task_name,
            "project_id": letter.project_id, "user_id": letter.user_id,
            "exception_type": letter.exception_type}
