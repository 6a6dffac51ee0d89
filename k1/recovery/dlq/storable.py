"""A dead letter made storable: what the database would refuse, repaired before the insert.

PostgreSQL refuses NUL characters and lone surrogates in text and JSONB, strings longer
than their column, JSON nested deeper than its parser allows, NaN in JSONB and integers
beyond INTEGER. A failure carrying any of these is still one someone must see, so the
letter is stored repaired and its ``repairs`` column says what changed, field by field::

    row = storable(fields)
    row["repairs"]   # {"project_id": {"changes": ["truncated"], "original": "p-xxxx…"},
                     #  "kwargs": {"changes": ["escaped", "not_json"]}}   (None: unchanged)

The rules follow the model's columns (their types and lengths), so a new column is
covered without an edit here.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String

from k1.recovery.dlq.models import DeadLetter

MAX_JSON_DEPTH = 64  # far below PostgreSQL's jsonb limit, far above any honest argument
MAX_INT_BITS = 1024  # bigger integers become text: Python cannot print beyond ~4300 digits
ORIGINAL_LIMIT = 65_536  # characters of a truncated value kept in ``repairs``
HASH_SUFFIX = 17  # "~" and 16 hex digits of sha256: a truncated id stays distinct
INT32 = (-(2**31), 2**31 - 1)

_COLUMNS = {column.name: column.type for column in DeadLetter.__table__.columns
            if column.name not in ("id", "repairs")}


def storable(fields: dict[str, Any]) -> dict[str, Any]:
    """The row to insert for ``fields``: known columns only, repaired, with ``repairs``."""
    row: dict[str, Any] = {}
    repairs: dict[str, Any] = dict(fields.get("repairs") or {})  # kept across a re-repair
    for name, kind in _COLUMNS.items():
        if name not in fields:
            continue
        changes: list[str] = []
        value, original = _repair(fields[name], kind, changes)
        row[name] = value
        if changes:
            entry: dict[str, Any] = {"changes": changes}
            if original is not None:
                entry["original"] = original
            repairs[name] = entry
    row["repairs"] = repairs or None
    return row


def _repair(value: Any, kind: Any, changes: list[str]) -> tuple[Any, str | None]:
    """The storable value and, for a truncated string, the (escaped) original."""
    if value is None:
        return None, None
    if isinstance(kind, JSON):
        return _json(value, changes, 0), None
    if isinstance(kind, DateTime):  # a spooled letter's times come back as ISO text
        return _timestamp(value, changes), None
    if isinstance(kind, Integer):
        return _integer(value, changes), None
    if isinstance(kind, String):  # Text is a String without a length
        text = escape(value if isinstance(value, str) else _text_of(value, changes), changes)
        if kind.length and len(text) > kind.length:
            changes.append("truncated")
            digest = hashlib.sha256(text.encode()).hexdigest()[:HASH_SUFFIX - 1]
            return f"{text[:kind.length - HASH_SUFFIX]}~{digest}", text[:ORIGINAL_LIMIT]
        return text, None
    return value, None


def escape(text: str, changes: list[str] | None = None) -> str:
    """``text`` without NUL characters and lone surrogates (written as ``\\x00``, ``\\udcxx``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        _note(changes, "escaped")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
        _note(changes, "escaped")
    return text


def _json(value: Any, changes: list[str], depth: int) -> Any:
    if depth > MAX_JSON_DEPTH:
        _note(changes, "too_deep")
        return f"<nested deeper than {MAX_JSON_DEPTH} levels>"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return escape(value, changes)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            _note(changes, "not_json")
            return f"<integer of {value.bit_length()} bits>"
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        _note(changes, "not_json")
        return repr(value)
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _note(changes, "not_json")
                key = _text_of(key, changes)
            items[escape(key, changes)] = _json(item, changes, depth + 1)
        return items
    if isinstance(value, list | tuple):
        return [_json(item, changes, depth + 1) for item in value]
    _note(changes, "not_json")
    return escape(_text_of(value, changes), changes)


def _text_of(value: Any, changes: list[str]) -> str:
    """``repr`` of anything, even an object whose ``repr`` raises or recurses."""
    try:
        text = repr(value)
    except Exception as exc:  # a hostile __repr__ must not cost the letter
        _note(changes, "unprintable")
        return f"<{type(value).__name__} object: repr raised {type(exc).__name__}>"
    return text[:ORIGINAL_LIMIT]


def _timestamp(value: Any, changes: list[str]) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return _timestamp(datetime.fromisoformat(str(value)), changes)
    except ValueError:
        _note(changes, "not_a_time")
        return datetime.now(UTC)


def _integer(value: Any, changes: list[str]) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        _note(changes, "not_an_integer")
        return 0
    low, high = INT32
    if not low <= number <= high:
        _note(changes, "out_of_range")
        return min(max(number, low), high)
    return number


def _note(changes: list[str] | None, change: str) -> None:
    if changes is not None and change not in changes:
        changes.append(change)
