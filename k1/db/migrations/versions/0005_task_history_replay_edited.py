"""task history: what an edited replay of a dead letter changed

Revision ID: 0005_task_history_replay_edited
Revises: 0004_task_history
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_task_history_replay_edited"
down_revision = "0004_task_history"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row, whatever the table's size.
    op.add_column("task_history", sa.Column("replay_edited", sa.String(32)))


def downgrade() -> None:
    op.drop_column("task_history", "replay_edited")
