"""Tables of the dead-letter queue.

- ``dead_letters``: one row per task attempt that failed for good.
- ``dlq_counts``: dead letters per (project, task, exception), kept by database triggers in
  the transaction that changes ``dead_letters`` (migration 0002), so stats read a few rows.
- ``dlq_quarantine``: letters the database refused even after :mod:`.storable` repaired
  them, kept byte for byte with the reason.
- ``dlq_depth_snapshots``: depth over time, for the daily average.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from k1.db import Base

STATUSES = ("dead", "replayed", "discarded")
JSONType = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only


class DeadLetter(Base):
    """A task that failed for good, with what is needed to understand and replay it."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        # One row per failed attempt: a redelivered failure of the same attempt
        # (acks_late after a crash) hits this constraint and writes nothing.
        UniqueConstraint("task_id", "attempts", name="uq_dead_letters_task_attempt"),
        CheckConstraint(f"status IN {STATUSES}", name="ck_dead_letters_status"),
        Index("ix_dead_letters_status_died", "status", "died_at", "id"),
        Index("ix_dead_letters_project_died", "project_id", "died_at", "id"),
        Index("ix_dead_letters_task_died", "task_name", "died_at", "id"),
        Index("ix_dead_letters_exception_died", "exception_type", "died_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(64))
    task_name: Mapped[str] = mapped_column(String(255))
    queue: Mapped[str | None] = mapped_column(String(255))
    args: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    project_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[str | None] = mapped_column(String(255))
    exception_type: Mapped[str] = mapped_column(String(255))
    exception_message: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer)
    first_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    died_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    worker: Mapped[str | None] = mapped_column(String(255))
    breaker_states: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    workflow_id: Mapped[str | None] = mapped_column(String(64))
    conductor_task_id: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="dead")
    replay_count: Mapped[int] = mapped_column(Integer, default=0)
    replay_task_id: Mapped[str | None] = mapped_column(String(64))
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What was changed to make the letter storable, by field (see k1.recovery.dlq.storable);
    # None for a letter stored as it came.
    repairs: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


NO_PROJECT = ""  # DeadLetterCount.project_id of letters without a project


class DeadLetterCount(Base):
    """How many letters are dead per project, task and exception. Written only by the
    triggers of migration 0002 (every insert, status change and delete of ``dead_letters``,
    in the same transaction); read by the stats.
    """

    __tablename__ = "dlq_counts"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    exception_type: Mapped[str] = mapped_column(String(255), primary_key=True)
    dead: Mapped[int] = mapped_column(BigInteger, default=0)


class QuarantinedLetter(Base):
    """A spooled or recorded letter the database refused: the payload as it came, why it was
    refused, and the identifying fields (repaired so that they are storable) for scoping.
    """

    __tablename__ = "dlq_quarantine"
    __table_args__ = (Index("ix_dlq_quarantine_project", "project_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # sha256 of the payload: the same letter quarantined twice (a drain that crashed
    # before trimming the spool) makes one row.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    quarantined_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text)
    project_id: Mapped[str | None] = mapped_column(String(255))
    task_id: Mapped[str | None] = mapped_column(String(64))
    task_name: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[bytes] = mapped_column(LargeBinary)


ALL_PROJECTS = "*"  # DepthSnapshot.project_id of the row that holds the total


class DepthSnapshot(Base):
    """DLQ depth at a moment, in total (project ``*``) and per project with letters;
    the last day's snapshots give ``daily_avg_depth``.
    """

    __tablename__ = "dlq_depth_snapshots"
    __table_args__ = (Index("ix_dlq_depth_snapshots_taken", "taken_at", "project_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    project_id: Mapped[str] = mapped_column(String(255))
    depth: Mapped[int] = mapped_column(Integer)
