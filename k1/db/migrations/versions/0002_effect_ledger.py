"""effect ledger: effects done once in PostgreSQL (k1.tasks.effects)

Revision ID: 0002_effect_ledger
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_effect_ledger"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "effect_ledger",
        sa.Column("effect_key", sa.String(36), primary_key=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("result", JSON, nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("effect_ledger")
