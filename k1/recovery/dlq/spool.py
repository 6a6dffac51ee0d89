"""The Redis spool: letters waiting while the database cannot be reached, and the drain
that moves them in once it can.

    push(row)            # rpush to k1:dlq:spool (a storable row, see .storable)
    drain(on_written)    # under a redis-py Lock, extended while it runs

The drain inserts a batch before trimming it from the spool, so a crash in between only
repeats an idempotent insert. A letter the database refuses does not stop it: the batch is
retried letter by letter and each refused one goes to :mod:`.quarantine`, so one bad
letter never blocks the ones behind it. Only an unreachable database stops a drain.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from redis.exceptions import LockError, RedisError
from sqlalchemy.exc import SQLAlchemyError

from k1.connections import get_redis
from k1.db import is_unreachable
from k1.recovery.dlq.quarantine import quarantine
from k1.recovery.dlq.rows import Inserted, insert_rows
from k1.recovery.dlq.storable import storable

log = logging.getLogger(__name__)

SPOOL_KEY = "k1:dlq:spool"  # Redis list of letters waiting for the database
SPOOL_LOCK_KEY = "k1:dlq:spool:lock"
SPOOL_LOCK_TTL = 120  # seconds; a drain that dies frees the lock by itself, a live one extends it
DRAIN_BATCH = 500  # letters moved from the spool per transaction

Written = list[tuple[Inserted, dict[str, Any]]]


@dataclass
class Drained:
    written: int = 0
    quarantined: int = 0
    reasons: list[str] = field(default_factory=list)


def push(row: dict[str, Any]) -> None:
    """Spool a storable row; raises if Redis is unreachable too (after logging the letter)."""
    payload = dump(row)
    try:
        get_redis().rpush(SPOOL_KEY, payload)
    except RedisError:
        # Database and Redis both down: the log is the last place the letter can go.
        log.critical("dead letter could not be stored or spooled: %s", payload)
        raise


def depth() -> int:
    return int(get_redis().llen(SPOOL_KEY))


def drain(on_written: Callable[[Written], None] = lambda _: None) -> Drained:
    """Move spooled letters into the database (one drainer at a time); ``on_written`` hears
    of each batch's new rows. Stops, leaving the rest spooled, if the database is unreachable.
    """
    client = get_redis()
    lock = client.lock(SPOOL_LOCK_KEY, timeout=SPOOL_LOCK_TTL, blocking=False)
    if not lock.acquire():
        return Drained()
    outcome = Drained()
    try:
        # decode_responses=True (k1.connections): the items are str.
        while raw := cast(list[str], client.lrange(SPOOL_KEY, 0, DRAIN_BATCH - 1)):
            written = _move(raw, outcome)
            client.ltrim(SPOOL_KEY, len(raw), -1)
            outcome.written += len(written)
            on_written(written)
            # A long drain keeps its lock; a drain that lost it (stalled past the TTL while
            # another took over) stops here rather than race the new owner.
            lock.extend(SPOOL_LOCK_TTL, replace_ttl=True)
    except LockError:
        log.warning("spool drain lost its lock after %d letters; another drain goes on",
                    outcome.written)
    finally:
        with contextlib.suppress(LockError):  # expired or taken over: nothing of ours left
            lock.release()
    return outcome


def _move(raw: Sequence[str], outcome: Drained) -> Written:
    """Insert one batch; refused letters are quarantined. Raises if the database is
    unreachable (the batch stays spooled).
    """
    rows: list[tuple[str, dict[str, Any]]] = []
    for item in raw:
        try:
            rows.append((item, storable(json.loads(item))))
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            _quarantine(item, f"not a spooled letter: {type(exc).__name__}: {exc}", None,
                        outcome)
    try:
        return _written(insert_rows([row for _, row in rows]), rows)
    except SQLAlchemyError as exc:
        if is_unreachable(exc):
            raise
        log.warning("the database refused a batch of %d spooled letters (%s); "
                    "writing them one by one", len(rows), type(exc).__name__)
    written: Written = []
    for item, row in rows:
        try:
            written += _written(insert_rows([row]), [(item, row)])
        except SQLAlchemyError as exc:
            if is_unreachable(exc):
                raise
            _quarantine(item, f"{type(exc).__name__}: {exc}", row, outcome)
    return written


def _quarantine(item: str, reason: str, fields: Any, outcome: Drained) -> None:
    log.error("quarantining a spooled dead letter: %s", reason.splitlines()[0])
    try:
        quarantine(item.encode("utf-8", "surrogateescape"), reason, fields)
    except SQLAlchemyError as exc:
        if is_unreachable(exc):
            raise
        # Refused even as bytes with escaped fields: the log is the last place left, and
        # the letters behind it must not wait for it.
        log.critical("dead letter refused by the database and its quarantine (%s): %s",
                     exc, item)
    outcome.quarantined += 1
    outcome.reasons.append(reason)


def _written(inserted: list[Inserted], rows: Sequence[tuple[str, dict[str, Any]]]) -> Written:
    by_attempt = {(row.get("task_id"), row.get("attempts")): row for _, row in rows}
    return [(item, by_attempt[(item.task_id, item.attempts)]) for item in inserted]


def dump(row: dict[str, Any]) -> str:
    """A row as spool JSON (ASCII: lone surrogates and NULs travel as escapes)."""
    return json.dumps(row, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)
