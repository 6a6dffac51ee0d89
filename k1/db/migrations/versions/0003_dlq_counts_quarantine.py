"""dead-letter counts kept by triggers, quarantine, repairs

Revision ID: 0003_dlq_counts_quarantine
Revises: 0001
Create Date: 2026-11-27

``dlq_counts`` holds the number of dead letters per (project, task, exception). Triggers
keep it in the transaction that inserts, updates or deletes ``dead_letters`` -- whoever
writes (the store, retention, a bulk load in SQL) -- so ``GET /api/dlq/stats`` reads a few
rows instead of counting a million. PostgreSQL uses statement-level triggers with
transition tables (one aggregated upsert per statement, so deleting 10,000 rows is one
write); SQLite, the local default, row-level ones.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003_dlq_counts_quarantine"
down_revision = "0002_effect_ledger"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Adds the dead rows of one transition table (sign +1) or removes them (-1). Ordered by key
# so that concurrent statements lock count rows in the same order (no deadlock).
PG_APPLY = """
        INSERT INTO dlq_counts (project_id, task_name, exception_type, dead)
        SELECT coalesce(project_id, ''), task_name, exception_type, {sign} * count(*)
        FROM {table} WHERE status = 'dead'
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (project_id, task_name, exception_type)
        DO UPDATE SET dead = dlq_counts.dead + excluded.dead;"""

PG_FUNCTION = f"""
CREATE FUNCTION dlq_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM dlq_counts;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN{PG_APPLY.format(sign=-1, table="old_rows")}
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN{PG_APPLY.format(sign=1, table="new_rows")}
    END IF;
    RETURN NULL;
END $$;
"""

PG_TRIGGERS = {
    "dlq_counts_insert": "AFTER INSERT ON dead_letters REFERENCING NEW TABLE AS new_rows",
    "dlq_counts_update": "AFTER UPDATE ON dead_letters "
                         "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "dlq_counts_delete": "AFTER DELETE ON dead_letters REFERENCING OLD TABLE AS old_rows",
}

SQLITE_ADD = """
    INSERT OR IGNORE INTO dlq_counts VALUES (coalesce(NEW.project_id, ''), NEW.task_name,
                                             NEW.exception_type, 0);
    UPDATE dlq_counts SET dead = dead + 1 WHERE project_id = coalesce(NEW.project_id, '')
        AND task_name = NEW.task_name AND exception_type = NEW.exception_type;"""
SQLITE_REMOVE = """
    UPDATE dlq_counts SET dead = dead - 1 WHERE project_id = coalesce(OLD.project_id, '')
        AND task_name = OLD.task_name AND exception_type = OLD.exception_type;"""
SQLITE_TRIGGERS = {
    "dlq_counts_insert": f"AFTER INSERT ON dead_letters WHEN NEW.status = 'dead' BEGIN"
                         f"{SQLITE_ADD} END",
    "dlq_counts_delete": f"AFTER DELETE ON dead_letters WHEN OLD.status = 'dead' BEGIN"
                         f"{SQLITE_REMOVE} END",
    "dlq_counts_update_old": f"AFTER UPDATE ON dead_letters WHEN OLD.status = 'dead' BEGIN"
                             f"{SQLITE_REMOVE} END",
    "dlq_counts_update_new": f"AFTER UPDATE ON dead_letters WHEN NEW.status = 'dead' BEGIN"
                             f"{SQLITE_ADD} END",
}

BACKFILL = """
INSERT INTO dlq_counts (project_id, task_name, exception_type, dead)
SELECT coalesce(project_id, ''), task_name, exception_type, count(*)
FROM dead_letters WHERE status = 'dead' GROUP BY 1, 2, 3
"""


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("repairs", JSON, nullable=True))
    # The stats counted through this index; they read dlq_counts now, and every insert
    # no longer pays for it.
    op.drop_index("ix_dead_letters_dead_counts", "dead_letters")
    op.create_table(
        "dlq_counts",
        sa.Column("project_id", sa.String(255), primary_key=True),
        sa.Column("task_name", sa.String(255), primary_key=True),
        sa.Column("exception_type", sa.String(255), primary_key=True),
        sa.Column("dead", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "dlq_quarantine",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("project_id", sa.String(255)),
        sa.Column("task_id", sa.String(64)),
        sa.Column("task_name", sa.String(255)),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_dlq_quarantine_project", "dlq_quarantine", ["project_id", "id"])
    if op.get_context().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
        for name, when in PG_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION dlq_counts_apply()")
        op.execute("CREATE TRIGGER dlq_counts_truncate AFTER TRUNCATE ON dead_letters "
                   "FOR EACH STATEMENT EXECUTE FUNCTION dlq_counts_apply()")
    else:
        for name, body in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
    op.execute(BACKFILL)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for name in (*PG_TRIGGERS, "dlq_counts_truncate"):
            op.execute(f"DROP TRIGGER {name} ON dead_letters")
        op.execute("DROP FUNCTION dlq_counts_apply()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("dlq_quarantine")
    op.drop_table("dlq_counts")
    dead = sa.text("status = 'dead'")
    op.create_index("ix_dead_letters_dead_counts", "dead_letters",
                    ["task_name", "exception_type"], postgresql_where=dead, sqlite_where=dead)
    op.drop_column("dead_letters", "repairs")
