"""Keyset paging (k1.db.keyset), pure logic: the cursor both routes have always issued,
the cursors they refuse, and the statement and page cut of "newest first"."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from k1.db.keyset import InvalidCursor, Keyset, bounded_int
from k1.history.filters import TASK_PAGES
from k1.history.models import TaskRun
from k1.recovery.dlq.filters import LETTER_PAGES, MAX_ID, FilterError

AT = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def raw(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_cursors_keep_the_format_both_routes_issued() -> None:
    task = SimpleNamespace(created_at=AT, task_id="abc")
    letter = SimpleNamespace(died_at=AT.replace(microsecond=250_000), id=42)
    assert TASK_PAGES.encode(task) == "MjAyNi0xMS0yN1QxMDowMDowMCswMDowMHxhYmM"
    assert LETTER_PAGES.encode(letter) == "MjAyNi0xMS0yN1QxMDowMDowMC4yNTAwMDArMDA6MDB8NDI"
    assert TASK_PAGES.decode(TASK_PAGES.encode(task)) == (AT, "abc")
    assert LETTER_PAGES.decode(LETTER_PAGES.encode(letter)) == (letter.died_at, 42)


def test_a_key_keeps_what_follows_the_first_separator() -> None:
    odd = SimpleNamespace(created_at=AT, task_id="a|b|ü")
    assert TASK_PAGES.decode(TASK_PAGES.encode(odd)) == (AT, "a|b|ü")


def test_a_time_without_offset_is_utc() -> None:
    assert TASK_PAGES.decode(raw("2026-11-27T10:00:00|abc")) == (AT, "abc")


@pytest.mark.parametrize(("pages", "cursor"), [
    (TASK_PAGES, "!!"),                                   # not base64
    (TASK_PAGES, raw("no separator")),
    (TASK_PAGES, raw("yesterday|abc")),                   # no time
    (TASK_PAGES, raw("2026-11-27T10:00:00+00:00|a\x00b")),  # NUL: no task id
    (TASK_PAGES, base64.urlsafe_b64encode(b"\xff\xfe|x").decode()),  # not UTF-8
    (LETTER_PAGES, raw("2026-11-27T10:00:00+00:00|abc")),  # not an id
    (LETTER_PAGES, raw("2026-11-27T10:00:00+00:00|0")),
    (LETTER_PAGES, raw(f"2026-11-27T10:00:00+00:00|{MAX_ID + 1}")),  # past BIGINT
])
def test_a_cursor_no_page_issued_is_the_routes_error_naming_the_field(
        pages: Keyset, cursor: str) -> None:
    with pytest.raises(FilterError, match=r"^cursor: not a cursor this API issued: "):
        pages.after(cursor)


def test_without_a_route_error_a_bad_cursor_is_invalid_cursor() -> None:
    pages = Keyset(TaskRun.created_at, TaskRun.task_id, parse_key=bounded_int(10))
    with pytest.raises(InvalidCursor, match="cursor: not a cursor this API issued"):
        pages.decode(raw("2026-11-27T10:00:00+00:00|11"))


def test_the_statement_reads_one_row_past_the_page_after_the_cursor() -> None:
    cursor = TASK_PAGES.encode(SimpleNamespace(created_at=AT, task_id="abc"))
    statement = TASK_PAGES.select(select(TaskRun).where(TaskRun.state == "FAILURE"),
                                  limit=50, cursor=cursor)
    compiled = statement.compile()
    sql = " ".join(str(compiled).split())
    assert ("WHERE task_history.state = :state_1 AND (task_history.created_at, "
            "task_history.task_id) < (:param_1, :param_2) ORDER BY "
            "task_history.created_at DESC, task_history.task_id DESC LIMIT :param_3") in sql
    assert (compiled.params["param_1"], compiled.params["param_2"]) == (AT, "abc")
    assert compiled.params["param_3"] == 51
    first = str(TASK_PAGES.select(select(TaskRun), limit=5).compile())
    assert " < " not in first and TASK_PAGES.after(None) is None and TASK_PAGES.after("") is None


def test_the_cut_gives_the_page_and_the_cursor_of_its_last_row_when_more_follow() -> None:
    rows = [SimpleNamespace(created_at=AT, task_id=f"t{i}") for i in range(4, 0, -1)]
    page, next_cursor = TASK_PAGES.cut(rows, 3)
    assert page == rows[:3]
    assert next_cursor is not None and TASK_PAGES.decode(next_cursor) == (AT, "t2")
    assert TASK_PAGES.cut(rows, 4) == (rows, None)
    assert TASK_PAGES.cut([], 3) == ([], None)
