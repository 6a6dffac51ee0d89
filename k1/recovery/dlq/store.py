"""``DeadLetterStore``: the one way in and out of the dead-letter queue.

    store = DeadLetterStore()
    store.record(fields)                    # idempotent; spooled in Redis if the DB is down
    page, cursor = store.query(LetterFilter(task="k1.tasks.demo.flaky"), limit=50)
    store.replay(letter_id)                 # re-sends the task, marks the letter replayed
    store.stats()                           # {depth, by_task, by_exception, oldest_at, ...}

Every change is announced with a ``dlq_changed`` event.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

import k1.headers
from k1.connections import get_redis
from k1.db import get_engine, session_scope
from k1.events import emit
from k1.recovery.dlq.filters import LetterFilter, cursor_condition, encode_cursor
from k1.recovery.dlq.models import ALL_PROJECTS, DeadLetter, DepthSnapshot

log = logging.getLogger(__name__)

SPOOL_KEY = "k1:dlq:spool"  # Redis list of letters waiting for the database
SPOOL_LOCK_KEY = "k1:dlq:spool:lock"
SPOOL_LOCK_TTL = 120  # seconds; a drain that dies frees the lock by itself
DRAIN_BATCH = 500  # letters moved from the spool per transaction
REPLAY_BATCH = 500  # letters replayed per transaction in a bulk replay
RETENTION_BATCH = 10_000  # rows deleted per statement, to keep locks short
DAILY_WINDOW = timedelta(days=1)


class LetterNotFound(LookupError):
    pass


class ReplayRefused(Exception):
    """The letter was replayed or discarded already; ``force`` overrides."""


@dataclass(frozen=True)
class Recorded:
    outcome: str  # "written", "duplicate" or "spooled"
    letter_id: int | None = None


class DeadLetterStore:
    """Dead letters in the database, with a Redis spool for database outages."""

    # -- writing ---------------------------------------------------------------------

    def record(self, fields: dict[str, Any]) -> Recorded:
        """Write one letter; a second write of the same task attempt is a no-op.

        If the database cannot be reached the letter goes to the Redis spool, which
        :meth:`drain_spool` empties once the database is back.
        """
        try:
            ids = self._insert([fields])
        except SQLAlchemyError as exc:
            log.error("database unavailable (%s); spooling dead letter of %s",
                      type(exc).__name__, fields.get("task_id"))
            self.spool(fields)
            return Recorded("spooled")
        if not ids:
            return Recorded("duplicate")
        self._announce("added", ids[0], fields)
        return Recorded("written", ids[0])

    def record_many(self, letters: Sequence[dict[str, Any]]) -> list[int]:
        """Write many letters in one statement (no spool: the caller keeps them on error);
        returns the ids of the rows written (duplicates are skipped).
        """
        ids = self._insert(letters)
        if ids:
            emit("dlq_changed", type="added", count=len(ids))
        return ids

    def spool(self, fields: dict[str, Any]) -> None:
        payload = json.dumps(fields, default=_json_default)
        try:
            get_redis().rpush(SPOOL_KEY, payload)
        except RedisError:
            # Database and Redis both down: the log is the last place the letter can go.
            log.critical("dead letter could not be stored or spooled: %s", payload)
            raise

    def spool_depth(self) -> int:
        return int(get_redis().llen(SPOOL_KEY))

    def drain_spool(self) -> int:
        """Move spooled letters into the database; returns how many were written.

        Idempotent and safe to run from many workers: one drains at a time (a Redis
        lock), and rows are inserted before they leave the spool, so a crash between
        the two only leads to a harmless duplicate insert.
        """
        client = get_redis()
        token = uuid.uuid4().hex
        if not client.set(SPOOL_LOCK_KEY, token, nx=True, ex=SPOOL_LOCK_TTL):
            return 0
        written = 0
        try:
            while raw := client.lrange(SPOOL_KEY, 0, DRAIN_BATCH - 1):
                letters = [_revive(json.loads(item)) for item in raw]
                ids = self._insert(letters)
                client.ltrim(SPOOL_KEY, len(raw), -1)
                written += len(ids)
                for letter_id, fields in zip(ids, letters, strict=False):
                    self._announce("added", letter_id, fields)
        finally:
            if client.get(SPOOL_LOCK_KEY) == token:
                client.delete(SPOOL_LOCK_KEY)
        return written

    def _insert(self, letters: Sequence[dict[str, Any]]) -> list[int]:
        rows = [_row(fields) for fields in letters]
        if not rows:
            return []
        dialect = get_engine().dialect.name
        builder = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
        with session_scope() as session:
            if builder is None:  # another database: no upsert, one row at a time
                return [session.execute(insert(DeadLetter).values(**row)
                                        .returning(DeadLetter.id)).scalar_one() for row in rows]
            # One cached statement, executed for many rows ("insertmanyvalues" batching).
            statement = (builder(DeadLetter)
                         .on_conflict_do_nothing(index_elements=["task_id", "attempts"])
                         .returning(DeadLetter.id))
            return list(session.scalars(statement, rows))

    # -- reading ---------------------------------------------------------------------

    def query(self, filters: LetterFilter, *, limit: int = 50,
              cursor: str | None = None) -> tuple[list[DeadLetter], str | None]:
        """A page of letters, newest death first, and the cursor of the next page."""
        conditions = filters.where()
        after = cursor_condition(cursor)
        if after is not None:
            conditions.append(after)
        statement = (select(DeadLetter).where(*conditions)
                     .order_by(DeadLetter.died_at.desc(), DeadLetter.id.desc()).limit(limit + 1))
        with session_scope() as session:
            rows = list(session.scalars(statement))
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    def get(self, letter_id: int, scope: frozenset[str] | None = None) -> DeadLetter:
        with session_scope() as session:
            letter = session.get(DeadLetter, letter_id)
        if letter is None or not _in_scope(letter, scope):
            raise LetterNotFound(letter_id)
        return letter

    def stats(self, scope: frozenset[str] | None = None) -> dict[str, Any]:
        """Depth (letters still dead), its split by task and exception, the oldest death,
        and the average depth over the last day's snapshots.
        """
        dead = LetterFilter(status="dead", scope=scope).where()
        with session_scope() as session:
            by_task = dict(session.execute(
                select(DeadLetter.task_name, func.count()).where(*dead)
                .group_by(DeadLetter.task_name)).all())
            by_exception = dict(session.execute(
                select(DeadLetter.exception_type, func.count()).where(*dead)
                .group_by(DeadLetter.exception_type)).all())
            summary = self._summary(session, scope, depth=sum(by_task.values()))
        return {**summary, "by_task": by_task, "by_exception": by_exception}

    def summary(self, scope: frozenset[str] | None = None) -> dict[str, Any]:
        """Depth, oldest death and daily average only: what the metrics need, without
        the splits by task and exception (a scan of every dead row).
        """
        with session_scope() as session:
            return self._summary(session, scope)

    def _summary(self, session: Session, scope: frozenset[str] | None,
                 depth: int | None = None) -> dict[str, Any]:
        dead = LetterFilter(status="dead", scope=scope).where()
        if depth is None:
            depth = session.scalar(select(func.count()).where(*dead)) or 0
        oldest = session.scalar(select(func.min(DeadLetter.died_at)).where(*dead))
        daily_avg = self._daily_average(session, scope)
        return {
            "depth": depth,
            "oldest_at": _iso(oldest),
            "daily_avg_depth": depth if daily_avg is None else round(daily_avg, 2),
        }

    def _daily_average(self, session: Session, scope: frozenset[str] | None) -> float | None:
        since = datetime.now(UTC) - DAILY_WINDOW
        snapshots = session.scalar(select(func.count()).where(
            DepthSnapshot.project_id == ALL_PROJECTS, DepthSnapshot.taken_at >= since))
        if not snapshots:
            return None
        projects = (DepthSnapshot.project_id == ALL_PROJECTS if scope is None
                    else DepthSnapshot.project_id.in_(sorted(scope)))
        total = session.scalar(select(func.coalesce(func.sum(DepthSnapshot.depth), 0))
                               .where(projects, DepthSnapshot.taken_at >= since))
        return float(total) / snapshots

    # -- operator actions --------------------------------------------------------------

    def replay(self, letter_id: int, *, force: bool = False,
               scope: frozenset[str] | None = None) -> DeadLetter:
        """Send the letter's task again (same args, kwargs, project, idempotency key)
        and mark the letter replayed with the new task id.
        """
        with session_scope() as session:
            letter = session.get(DeadLetter, letter_id, with_for_update=True)
            if letter is None or not _in_scope(letter, scope):
                raise LetterNotFound(letter_id)
            if letter.status != "dead" and not force:
                raise ReplayRefused(
                    f"letter {letter_id} is {letter.status} already"
                    + (f" (as task {letter.replay_task_id})" if letter.replay_task_id else "")
                    + "; force to replay it again"
                )
            _resend(letter)
        self._announce("replayed", letter.id, _fields_of(letter),
                       replay_task_id=letter.replay_task_id)
        return letter

    def replay_matching(self, filters: LetterFilter, *, force: bool = False,
                        progress: Callable[[int], None] | None = None) -> list[str]:
        """Replay every letter matching ``filters``; returns the new task ids."""
        from k1.celery import app

        task_ids: list[str] = []
        for batch in self._id_batches(filters, REPLAY_BATCH):
            with session_scope() as session, app.producer_or_acquire() as producer:
                letters = session.scalars(
                    select(DeadLetter).where(DeadLetter.id.in_(batch))
                    .with_for_update(skip_locked=True).order_by(DeadLetter.id))
                for letter in letters:
                    if letter.status != "dead" and not force:
                        continue
                    _resend(letter, producer)
                    task_ids.append(letter.replay_task_id or "")
            if progress:
                progress(len(batch))
        if task_ids:
            emit("dlq_changed", type="replayed", count=len(task_ids),
                 project_id=filters.project_id)
        return task_ids

    def count(self, filters: LetterFilter) -> int:
        with session_scope() as session:
            return int(session.scalar(select(func.count()).where(*filters.where())) or 0)

    def discard(self, letter_id: int, scope: frozenset[str] | None = None) -> DeadLetter:
        """Mark a letter discarded: it leaves the queue but stays for forensics."""
        with session_scope() as session:
            letter = session.get(DeadLetter, letter_id, with_for_update=True)
            if letter is None or not _in_scope(letter, scope):
                raise LetterNotFound(letter_id)
            letter.status = "discarded"
        self._announce("discarded", letter.id, _fields_of(letter))
        return letter

    def purge(self, filters: LetterFilter) -> int:
        """Delete the matching letters for good; returns how many."""
        deleted = 0
        for batch in self._id_batches(filters, RETENTION_BATCH):
            with session_scope() as session:
                deleted += session.execute(
                    delete(DeadLetter).where(DeadLetter.id.in_(batch))).rowcount or 0
        if deleted:
            emit("dlq_changed", type="purged", count=deleted, project_id=filters.project_id)
        return deleted

    def _id_batches(self, filters: LetterFilter, size: int) -> Iterator[list[int]]:
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

    # -- housekeeping ----------------------------------------------------------------

    def enforce_retention(self, *, max_age: timedelta, max_rows: int) -> dict[str, int]:
        """Delete letters older than ``max_age``, then the oldest beyond ``max_rows``."""
        cutoff = datetime.now(UTC) - max_age
        by_age = by_count = 0
        with session_scope() as session:
            while True:
                oldest = select(DeadLetter.id).where(DeadLetter.died_at < cutoff).limit(
                    RETENTION_BATCH)
                removed = session.execute(
                    delete(DeadLetter).where(DeadLetter.id.in_(oldest))).rowcount or 0
                by_age += removed
                if removed < RETENTION_BATCH:
                    break
            excess = (session.scalar(select(func.count()).select_from(DeadLetter)) or 0) - max_rows
            while excess > 0:
                oldest = (select(DeadLetter.id)
                          .order_by(DeadLetter.died_at, DeadLetter.id)
                          .limit(min(excess, RETENTION_BATCH)))
                removed = session.execute(
                    delete(DeadLetter).where(DeadLetter.id.in_(oldest))).rowcount or 0
                by_count += removed
                excess -= removed
                if not removed:
                    break
            session.execute(delete(DepthSnapshot).where(DepthSnapshot.taken_at < cutoff))
        if by_age or by_count:
            emit("dlq_changed", type="purged", count=by_age + by_count, reason="retention")
        return {"expired": by_age, "over_limit": by_count}

    def snapshot_depth(self) -> int:
        """Record the current depth, in total and per project; returns the total."""
        now = datetime.now(UTC)
        with session_scope() as session:
            per_project = session.execute(
                select(DeadLetter.project_id, func.count()).where(DeadLetter.status == "dead")
                .group_by(DeadLetter.project_id)).all()
            total = sum(count for _, count in per_project)
            session.add(DepthSnapshot(taken_at=now, project_id=ALL_PROJECTS, depth=total))
            session.add_all(DepthSnapshot(taken_at=now, project_id=project, depth=count)
                            for project, count in per_project if project is not None)
        return total

    # -- events ----------------------------------------------------------------------

    def _announce(self, change: str, letter_id: int, fields: dict[str, Any],
                  **extra: Any) -> None:
        emit("dlq_changed", type=change, letter_id=letter_id, task_id=fields.get("task_id"),
             task_name=fields.get("task_name"), project_id=fields.get("project_id"),
             user_id=fields.get("user_id"), exception=fields.get("exception_type"), **extra)


def letter_as_dict(letter: DeadLetter, *, full: bool = True) -> dict[str, Any]:
    """The JSON form of a letter (the API's and the CLI's); ``full`` adds the traceback."""
    body = {column.name: getattr(letter, column.name) for column in DeadLetter.__table__.columns}
    for key in ("first_failed_at", "died_at", "replayed_at"):
        body[key] = _iso(body[key])
    if not full:
        body.pop("traceback")
    return body


def _resend(letter: DeadLetter, producer: Any = None) -> None:
    """Send the letter's task again and mark it replayed (inside the caller's transaction)."""
    from k1.celery import app
    from k1.tasks.submissions import Submission, record

    headers = {
        k1.headers.PROJECT: letter.project_id,
        k1.headers.USER: letter.user_id,
        k1.headers.IDEMPOTENCY_KEY: letter.idempotency_key or letter.task_id,
        k1.headers.CONDUCTOR_WORKFLOW: letter.workflow_id,
        k1.headers.CONDUCTOR_TASK: letter.conductor_task_id,
        k1.headers.REPLAY_OF: letter.id,
    }
    options: dict[str, Any] = {"queue": letter.queue} if letter.queue else {}
    result = app.send_task(letter.task_name, args=letter.args, kwargs=letter.kwargs,
                           headers={k: v for k, v in headers.items() if v is not None},
                           producer=producer, **options)
    if letter.project_id:
        record(Submission(result.id, letter.task_name, letter.project_id, letter.user_id,
                          datetime.now(UTC).timestamp()))
    letter.status = "replayed"
    letter.replay_count += 1
    letter.replay_task_id = result.id
    letter.replayed_at = datetime.now(UTC)


def _in_scope(letter: DeadLetter, scope: frozenset[str] | None) -> bool:
    return scope is None or letter.project_id in scope


def _row(fields: dict[str, Any]) -> dict[str, Any]:
    columns = {c.name for c in DeadLetter.__table__.columns} - {"id"}
    row = {key: value for key, value in fields.items() if key in columns}
    row.setdefault("status", "dead")
    row.setdefault("replay_count", 0)
    row.setdefault("args", [])
    row.setdefault("kwargs", {})
    row.setdefault("breaker_states", {})
    row.setdefault("exception_message", "")
    row.setdefault("traceback", "")
    return row


def _fields_of(letter: DeadLetter) -> dict[str, Any]:
    return {"task_id": letter.task_id, "task_name": letter.task_name,
            "project_id": letter.project_id, "user_id": letter.user_id,
            "exception_type": letter.exception_type}


def _revive(fields: dict[str, Any]) -> dict[str, Any]:
    """A spooled letter with its timestamps parsed back from JSON."""
    for key in ("first_failed_at", "died_at"):
        if isinstance(fields.get(key), str):
            fields[key] = datetime.fromisoformat(fields[key])
    return fields


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive UTC datetimes
        value = value.replace(tzinfo=UTC)
    return value.isoformat()
