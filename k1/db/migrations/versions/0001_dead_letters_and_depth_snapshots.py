"""dead letters and depth snapshots

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
INDEXES = {
    "ix_dead_letters_status_died": ["status", "died_at", "id"],
    "ix_dead_letters_project_died": ["project_id", "died_at", "id"],
    "ix_dead_letters_task_died": ["task_name", "died_at", "id"],
    "ix_dead_letters_exception_died": ["exception_type", "died_at", "id"],
}


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255)),
        sa.Column("args", JSON, nullable=False),
        sa.Column("kwargs", JSON, nullable=False),
        sa.Column("project_id", sa.String(255)),
        sa.Column("user_id", sa.String(255)),
        sa.Column("exception_type", sa.String(255), nullable=False),
        sa.Column("exception_message", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("died_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column("breaker_states", JSON, nullable=False),
        sa.Column("workflow_id", sa.String(64)),
        sa.Column("conductor_task_id", sa.String(64)),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("replay_count", sa.Integer(), nullable=False),
        sa.Column("replay_task_id", sa.String(64)),
        sa.Column("replayed_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("status IN ('dead', 'replayed', 'discarded')",
                           name="ck_dead_letters_status"),
        sa.UniqueConstraint("task_id", "attempts", name="uq_dead_letters_task_attempt"),
    )
    for name, columns in INDEXES.items():
        op.create_index(name, "dead_letters", columns)
    dead = sa.text("status = 'dead'")
    op.create_index("ix_dead_letters_dead_counts", "dead_letters",
                    ["task_name", "exception_type"], postgresql_where=dead, sqlite_where=dead)
    op.create_table(
        "dlq_depth_snapshots",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
    )
    op.create_index("ix_dlq_depth_snapshots_taken", "dlq_depth_snapshots",
                    ["taken_at", "project_id"])


def downgrade() -> None:
    op.drop_table("dlq_depth_snapshots")
    op.drop_table("dead_letters")
