"""task history: tasks, their attempts, and the records they are folded from

Revision ID: 0004_task_history
Revises: 0003_dlq_counts_quarantine
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_task_history"
down_revision = "0003_dlq_counts_quarantine"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)
INDEXES = {
    "ix_task_history_created": ["created_at", "task_id"],
    "ix_task_history_project_created": ["project_id", "created_at", "task_id"],
    "ix_task_history_name_created": ["task_name", "created_at", "task_id"],
    "ix_task_history_state_created": ["state", "created_at", "task_id"],
    "ix_task_history_worker_created": ["worker", "created_at", "task_id"],
}


def upgrade() -> None:
    op.create_table(
        "task_history",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("task_name", sa.String(255)),
        sa.Column("project_id", sa.String(255)),
        sa.Column("user_id", sa.String(255)),
        sa.Column("queue", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("submitted_at", TIME),
        sa.Column("started_at", TIME),
        sa.Column("finished_at", TIME),
        sa.Column("queue_wait_ms", sa.Double()),
        sa.Column("runtime_ms", sa.Double()),
        sa.Column("worker", sa.String(255)),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("args", JSON),
        sa.Column("kwargs", JSON),
        sa.Column("result", sa.Text()),
        sa.Column("error_type", sa.String(255)),
        sa.Column("error_message", sa.Text()),
        sa.Column("letter_id", sa.BigInteger()),
        sa.Column("workflow_id", sa.String(255)),
        sa.Column("conductor_task_id", sa.String(255)),
        sa.Column("schedule", sa.String(255)),
        sa.Column("replay_of", sa.String(255)),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("updated_at", TIME),
    )
    for name, columns in INDEXES.items():
        op.create_index(name, "task_history", columns)
    if op.get_context().dialect.name == "postgresql":
        # q: a task id prefix (LIKE 'q%' needs text_pattern_ops outside the C locale) and
        # text anywhere in arguments and errors (ILIKE '%q%' through trigrams).
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index("ix_task_history_id_prefix", "task_history", ["task_id"],
                        postgresql_ops={"task_id": "text_pattern_ops"})
        op.create_index("ix_task_history_search", "task_history", ["search_text"],
                        postgresql_using="gin", postgresql_ops={"search_text": "gin_trgm_ops"})
    op.create_table(
        "task_attempts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255),
                  sa.ForeignKey("task_history.task_id", ondelete="CASCADE"), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("received_at", TIME),
        sa.Column("started_at", TIME),
        sa.Column("ended_at", TIME),
        sa.Column("worker", sa.String(255)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("exception_type", sa.String(255)),
        sa.Column("exception_message", sa.Text()),
        sa.Column("runtime_ms", sa.Double()),
        sa.UniqueConstraint("task_id", "run", name="uq_task_attempts_task_run"),
    )
    op.create_table(
        "task_records",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("task_id", sa.String(255),
                  sa.ForeignKey("task_history.task_id", ondelete="CASCADE"), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("body", JSON, nullable=False),
    )
    op.create_index("ix_task_records_task_ts", "task_records", ["task_id", "ts"])


def downgrade() -> None:
    op.drop_table("task_records")
    op.drop_table("task_attempts")
    op.drop_table("task_history")
