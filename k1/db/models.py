"""All K1 tables, imported by Alembic's env so that autogenerate sees them."""

from k1.db import Base
from k1.history.models import TaskAttempt, TaskRecord, TaskRun
from k1.recovery.dlq.models import DeadLetter, DepthSnapshot
from k1.tasks.effects import EffectEntry

__all__ = ["Base", "DeadLetter", "DepthSnapshot", "EffectEntry", "TaskAttempt", "TaskRecord",
           "TaskRun"]
