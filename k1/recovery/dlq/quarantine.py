"""Letters the database refused even after repair: kept byte for byte with the reason, out
of the way of the letters behind them, and listed for the operator (``GET
/api/dlq/quarantine``, ``k1 dlq quarantine``).

    quarantine(payload, "DataError: ...", fields)   # idempotent per payload
    listing(scope={"acme"}, limit=50)
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from k1.db import insert_or_skip, session_scope
from k1.recovery.dlq.models import QuarantinedLetter
from k1.recovery.dlq.rows import iso
from k1.recovery.dlq.storable import escape, storable

REASON_LIMIT = 4_000  # characters of the database's refusal kept (its first lines say why)
IDENTIFYING = ("project_id", "task_id", "task_name")


def quarantine(payload: bytes, reason: str, fields: Any = None) -> None:
    """Keep ``payload`` (a letter as spooled) with ``reason``; ``fields``, when the payload
    parsed, give the project (for scoping), task id and task name.
    """
    known = fields if isinstance(fields, dict) else {}
    identity = storable({key: known.get(key) for key in IDENTIFYING})
    row = {
        "fingerprint": hashlib.sha256(payload).hexdigest(),
        "quarantined_at": datetime.now(UTC),
        "reason": escape(reason)[:REASON_LIMIT],
        "payload": payload,
        **{key: identity.get(key) for key in IDENTIFYING},
    }
    with session_scope() as session:
        session.execute(insert_or_skip(QuarantinedLetter, "fingerprint").values(**row))


def listing(scope: frozenset[str] | None = None, *, limit: int = 50) -> list[dict[str, Any]]:
    """The newest quarantined letters the scope may see."""
    statement = select(QuarantinedLetter).order_by(QuarantinedLetter.id.desc()).limit(limit)
    if scope is not None:
        statement = statement.where(QuarantinedLetter.project_id.in_(sorted(scope)))
    with session_scope() as session:
        return [{
            "id": item.id,
            "quarantined_at": iso(item.quarantined_at),
            "reason": item.reason,
            "project_id": item.project_id,
            "task_id": item.task_id,
            "task_name": item.task_name,
            # Spooled letters are ASCII JSON; anything else is shown with escapes.
            "payload": item.payload.decode("utf-8", "backslashreplace"),
        } for item in session.scalars(statement)]


def count(scope: frozenset[str] | None = None) -> int:
    statement = select(func.count()).select_from(QuarantinedLetter)
    if scope is not None:
        statement = statement.where(QuarantinedLetter.project_id.in_(sorted(scope)))
    with session_scope() as session:
        return int(session.scalar(statement) or 0)
