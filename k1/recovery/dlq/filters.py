"""Which dead letters an operation is about: parsed once, from a query string or the CLI.

    f = LetterFilter.parse({"task": "k1.tasks.demo.flaky", "since": "2026-11-01"})
    f.where()        # SQLAlchemy conditions

Bad input raises :class:`FilterError` naming the field and the problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement

from k1.db.keyset import Keyset, bounded_int
from k1.recovery.dlq.models import STATUSES, DeadLetter

FIELDS = ("task", "exception", "project_id", "since", "until", "status")
TEXT_FIELDS = ("task", "exception", "project_id", "status")
ANY_STATUS = "all"
DEFAULT_LIMIT = 50  # letters per page when the caller does not say
MAX_LIMIT = 500  # letters per page at most: a page is read and rendered in one go
MAX_ID = 2**63 - 1  # dead_letters.id is a BIGINT: a cursor past it names no row


class FilterError(ValueError):
    """A filter field is unknown or malformed; the message names it."""


# Newest death first; the cursor is the last letter's (died_at, id).
LETTER_PAGES = Keyset(DeadLetter.died_at, DeadLetter.id, parse_key=bounded_int(MAX_ID),
                      error=FilterError)


@dataclass(frozen=True)
class LetterFilter:
    task: str | None = None
    exception: str | None = None
    project_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str | None = "dead"  # None: every status
    scope: frozenset[str] | None = None  # the projects the caller may see; None: all

    @classmethod
    def parse(cls, params: Mapping[str, Any], *, extra: tuple[str, ...] = ()) -> LetterFilter:
        unknown = set(params) - set(FIELDS) - set(extra)
        if unknown:
            raise FilterError(
                f"unknown filter(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(FIELDS + extra)}"
            )
        for name in TEXT_FIELDS:
            _check_text(name, params.get(name))
        status = params.get("status") or "dead"
        if status not in (*STATUSES, ANY_STATUS):
            raise FilterError(f"status: must be one of {', '.join((*STATUSES, ANY_STATUS))}, "
                              f"got {status!r}")
        return cls(
            task=params.get("task") or None,
            exception=params.get("exception") or None,
            project_id=params.get("project_id") or None,
            since=parse_time("since", params.get("since")),
            until=parse_time("until", params.get("until")),
            status=None if status == ANY_STATUS else status,
        )

    def scoped(self, projects: frozenset[str] | None) -> LetterFilter:
        """Limit to ``projects`` (None: no limit)."""
        return replace(self, scope=projects)

    def where(self) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if self.status:
            conditions.append(DeadLetter.status == self.status)
        if self.task:
            conditions.append(DeadLetter.task_name == self.task)
        if self.exception:
            conditions.append(DeadLetter.exception_type == self.exception)
        if self.project_id:
            conditions.append(DeadLetter.project_id == self.project_id)
        if self.since:
            conditions.append(DeadLetter.died_at >= self.since)
        if self.until:
            conditions.append(DeadLetter.died_at < self.until)
        if self.scope is not None:
            conditions.append(DeadLetter.project_id.in_(sorted(self.scope)))
        return conditions


def _check_text(field: str, value: Any) -> None:
    """Filters compare with text columns: a string PostgreSQL can hold, or nothing."""
    if value is None:
        return
    if not isinstance(value, str):
        raise FilterError(f"{field}: must be a string, got {_json_type(value)}")
    if "\x00" in value or _unencodable(value):
        raise FilterError(f"{field}: must be text without NUL or lone surrogate characters")


def _unencodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


def parse_time(field: str, raw: Any) -> datetime | None:
    """An ISO-8601 date or date-time (UTC when no offset is given)."""
    if raw in (None, ""):
        return None
    if isinstance(raw, datetime):
        value = raw
    else:
        if not isinstance(raw, str):
            raise FilterError(f"{field}: must be an ISO-8601 date or date-time string, "
                              f"got {_json_type(raw)}")
        text = raw.strip()
        try:
            value = (datetime.fromisoformat(text) if "T" in text or " " in text
                     else datetime.combine(date.fromisoformat(text), datetime.min.time()))
        except ValueError:
            raise FilterError(
                f"{field}: not an ISO-8601 date or date-time: {text!r} "
                "(e.g. 2026-11-26 or 2026-11-26T14:00:00Z)"
            ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_limit(raw: Any, *, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    if raw in (None, ""):
        return default
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise FilterError(f"limit: expected an integer, got {raw!r}") from None
    if not 1 <= limit <= maximum:
        raise FilterError(f"limit: must be between 1 and {maximum}, got {limit}")
    return limit
