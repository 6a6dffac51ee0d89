"""Tables of task history: one row per task, one per attempt, and the records they
are folded from (:mod:`k1.history.fold`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from k1.db import Base

JSONType = JSON().with_variant(JSONB(), "postgresql")
Time = DateTime(timezone=True)
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only
STATES = ("PENDING", "RECEIVED", "STARTED", "RETRY", "REQUEUED", "SUCCESS", "FAILURE",
          "REVOKED")
OUTCOMES = ("running", "succeeded", "failed", "retried", "deferred", "dead", "lost",
            "requeued", "revoked")


class TaskRun(Base):
    """A task as history knows it: the latest state, times, arguments and links."""

    __tablename__ = "task_history"
    __table_args__ = (
        # Newest first, by filter; (created_at, task_id) is the keyset of the pages.
        Index("ix_task_history_created", "created_at", "task_id"),
        Index("ix_task_history_project_created", "project_id", "created_at", "task_id"),
        Index("ix_task_history_name_created", "task_name", "created_at", "task_id"),
        Index("ix_task_history_state_created", "state", "created_at", "task_id"),
        Index("ix_task_history_worker_created", "worker", "created_at", "task_id"),
        # PostgreSQL: ``q`` as a task id prefix (LIKE 'q%') and as text anywhere in the
        # arguments and errors (ILIKE '%q%', pg_trgm's trigram index).
        Index("ix_task_history_id_prefix", "task_id",
              postgresql_ops={"task_id": "text_pattern_ops"}),
        Index("ix_task_history_search", "search_text", postgresql_using="gin",
              postgresql_ops={"search_text": "gin_trgm_ops"}),
    )

    task_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    task_name: Mapped[str | None] = mapped_column(String(255))
    project_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[str | None] = mapped_column(String(255))
    queue: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    # The first moment history knows of: the submission, else the first record.
    created_at: Mapped[datetime] = mapped_column(Time)
    submitted_at: Mapped[datetime | None] = mapped_column(Time)
    started_at: Mapped[datetime | None] = mapped_column(Time)  # of the latest attempt
    finished_at: Mapped[datetime | None] = mapped_column(Time)
    queue_wait_ms: Mapped[float | None] = mapped_column(Double)  # submission -> first start
    runtime_ms: Mapped[float | None] = mapped_column(Double)  # of the latest attempt
    worker: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    args: Mapped[Any] = mapped_column(JSONType, nullable=True)
    kwargs: Mapped[Any] = mapped_column(JSONType, nullable=True)
    result: Mapped[str | None] = mapped_column(Text)
    error_type: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    letter_id: Mapped[int | None] = mapped_column(BigInteger)
    workflow_id: Mapped[str | None] = mapped_column(String(255))
    conductor_task_id: Mapped[str | None] = mapped_column(String(255))
    schedule: Mapped[str | None] = mapped_column(String(255))
    replay_of: Mapped[str | None] = mapped_column(String(255))
    # What an edited replay changed ("args", "kwargs", "args,kwargs"); None: sent as it was.
    replay_edited: Mapped[str | None] = mapped_column(String(32))
    search_text: Mapped[str] = mapped_column(Text, default="")  # args, kwargs, error
    updated_at: Mapped[datetime | None] = mapped_column(Time)


class TaskAttempt(Base):
    """One run of a task on a worker: an attempt, or a delivery of it that was lost."""

    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_id", "run", name="uq_task_attempts_task_run"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("task_history.task_id", ondelete="CASCADE"))
    run: Mapped[int] = mapped_column(Integer)  # 1, 2, ... in order
    attempt: Mapped[int] = mapped_column(Integer)  # K1's attempt number (a lost run repeats it)
    received_at: Mapped[datetime | None] = mapped_column(Time)
    started_at: Mapped[datetime | None] = mapped_column(Time)
    ended_at: Mapped[datetime | None] = mapped_column(Time)
    worker: Mapped[str | None] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(16))
    exception_type: Mapped[str | None] = mapped_column(String(255))
    exception_message: Mapped[str | None] = mapped_column(Text)
    runtime_ms: Mapped[float | None] = mapped_column(Double)


class TaskRecord(Base):
    """A captured record, kept so that the task and its attempts can be folded again
    whatever order, and however often, records arrive in.
    """

    __tablename__ = "task_records"
    __table_args__ = (Index("ix_task_records_task_ts", "task_id", "ts"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the record's own id
    task_id: Mapped[str] = mapped_column(
        String(255), ForeignKey("task_history.task_id", ondelete="CASCADE"))
    ts: Mapped[float] = mapped_column(Double)
    type: Mapped[str] = mapped_column(String(16))
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
