"""What the dead-letter store does with letters PostgreSQL would refuse, and the counts that
the stats read, on the real server."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from k1.connections import get_redis
from k1.db import session_scope
from k1.recovery.dlq.filters import LetterFilter
from k1.recovery.dlq.models import DeadLetter, DeadLetterCount, QuarantinedLetter
from k1.recovery.dlq.spool import SPOOL_KEY
from k1.recovery.dlq.storable import storable
from k1.recovery.dlq.store import DeadLetterStore, ReplayRefused
from tests.conftest import API

pytestmark = pytest.mark.usefixtures("services")
store = DeadLetterStore()


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = {"down": [value]}
    return value


def looped() -> dict[str, Any]:
    value: dict[str, Any] = {}
    value["self"] = value
    return value


# Every kind of value the probe (and worse) sent, for every string and JSON field.
HOSTILE_TEXT = ["nul\x00byte", "lone \udc80 surrogate", "\ud800", "x" * 10_240,
                "\x00" * 300, "é" * 256]
HOSTILE_JSON = [{"k": "nul\x00"}, {"\udcff": "key is a lone surrogate"}, deep(5_000),
                looped(), {"set": {1, 2}}, {"obj": Unprintable()}, {"nan": float("nan")},
                {"big": 10 ** 5000}, {1: "int key"}, b"bytes\x00", [float("inf")]]
TEXT_FIELDS = ["project_id", "task_name", "user_id", "queue", "worker", "exception_type",
               "exception_message", "traceback", "idempotency_key", "workflow_id"]
JSON_FIELDS = ["args", "kwargs", "breaker_states"]


def letter(project: str, **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "task_id": str(uuid.uuid4()), "task_name": "k1.tasks.demo.flaky", "queue": "celery",
        "args": [], "kwargs": {"project_id": project}, "project_id": project, "user_id": "ada",
        "exception_type": "TimeoutError", "exception_message": "boom", "traceback": "Tb",
        "attempts": 1, "first_failed_at": now, "died_at": now, "worker": "w@test",
        "breaker_states": {}, **fields,
    }


def hostile_letters(project: str, count: int, seed: int) -> list[dict[str, Any]]:
    """Each field alone with each hostile value, then random mixes of several at once."""
    single = [letter(project, **{name: value})
              for name, value in itertools.chain(
                  itertools.product(TEXT_FIELDS, HOSTILE_TEXT),
                  itertools.product(JSON_FIELDS, HOSTILE_JSON),
                  [("attempts", 2 ** 40), ("task_id", f"{uuid.uuid4()}{'t' * 10_240}\x00")])]
    rng = random.Random(seed)
    mixed = []
    for _ in range(count):
        fields = {name: rng.choice(HOSTILE_TEXT) for name in rng.sample(TEXT_FIELDS, 3)}
        fields.update({name: rng.choice(HOSTILE_JSON) for name in rng.sample(JSON_FIELDS, 2)})
        mixed.append(letter(project, **fields))
    return single + mixed


def spooled_task_ids() -> list[str]:
    return [json.loads(raw).get("task_id") for raw in get_redis().lrange(SPOOL_KEY, 0, -1)]


def stored_id(fields: dict[str, Any]) -> str:
    """The task id as stored (a hostile one is repaired)."""
    return storable({"task_id": fields["task_id"]})["task_id"]


def rows_of(task_ids: list[str]) -> dict[str, DeadLetter]:
    with session_scope() as session:
        return {row.task_id: row for row in session.scalars(
            select(DeadLetter).where(DeadLetter.task_id.in_(task_ids)))}


def quarantined_of(task_ids: list[str | None]) -> dict[str | None, QuarantinedLetter]:
    with session_scope() as session:
        return {row.task_id: row for row in session.scalars(
            select(QuarantinedLetter).where(QuarantinedLetter.task_id.in_(task_ids)))}


def test_hostile_letters_are_stored_repaired_never_spooled() -> None:
    project = f"h-{uuid.uuid4().hex[:8]}"
    letters = hostile_letters(project, 40, seed=1)
    outcomes = [store.record(fields).outcome for fields in letters]
    assert set(outcomes) == {"written"}, outcomes
    assert not set(spooled_task_ids()) & {stored_id(fields) for fields in letters}
    rows = rows_of([stored_id(fields) for fields in letters])
    assert len(rows) == len(letters)
    # Stored exactly as repaired: the database changed nothing behind the store's back.
    for fields in letters:
        row, expected = rows[stored_id(fields)], storable(fields)
        assert {key: getattr(row, key) for key in expected if key != "first_failed_at"} == {
            key: value for key, value in expected.items() if key != "first_failed_at"}


def test_a_repaired_letter_says_what_changed_and_keeps_the_original() -> None:
    project = f"r-{uuid.uuid4().hex[:8]}"
    long_project = project + "x" * 10_240
    cases = {
        "long": letter(long_project),
        "nul": letter(project, kwargs={"k": "nul\x00"}, exception_message="a\x00b"),
        "surrogate": letter(project, exception_message="lone \udc80"),
        "deep": letter(project, args=[deep(5_000)]),
        "odd": letter(project, kwargs={"s": {1}, "o": Unprintable(), 2: float("nan")},
                      attempts=2 ** 40),
    }
    ids = {name: store.record(fields).letter_id for name, fields in cases.items()}
    got = {name: store.get(letter_id) for name, letter_id in ids.items()}

    long = got["long"]
    assert long.repairs == {"project_id": {"changes": ["truncated"], "original": long_project}}
    assert len(long.project_id) == 255 and long.project_id.startswith(project)
    assert long.project_id != long_project[:255]  # a hash suffix: no other project's id
    assert store.stats(frozenset({long_project[:255]}))["depth"] == 0
    assert got["nul"].kwargs == {"k": "nul\\x00"} and got["nul"].exception_message == "a\\x00b"
    assert got["nul"].repairs == {"kwargs": {"changes": ["escaped"]},
                                  "exception_message": {"changes": ["escaped"]}}
    assert got["surrogate"].exception_message == "lone \\udc80"
    assert got["deep"].repairs == {"args": {"changes": ["too_deep"]}}
    odd = got["odd"]
    assert odd.attempts == 2 ** 31 - 1 and odd.kwargs["s"] == "{1}" and odd.kwargs["2"] == "nan"
    assert "repr raised RuntimeError" in odd.kwargs["o"]
    assert set(odd.repairs["kwargs"]["changes"]) == {"not_json", "unprintable"}
    assert odd.repairs["attempts"] == {"changes": ["out_of_range"]}
    with pytest.raises(ReplayRefused, match="kwargs repaired to be stored"):
        store.replay(odd.id)


def spoolable(fields: dict[str, Any]) -> str | None:
    """The letter as JSON the way an older K1 spooled it, if it could be at all."""
    try:
        return json.dumps(fields, default=lambda value: value.isoformat()
                          if isinstance(value, datetime) else repr(value))
    except (ValueError, RecursionError, RuntimeError):
        return None


def test_a_refused_letter_never_blocks_the_spool(make_token, web: str) -> None:
    """Letters in the spool as an older K1 (or a database outage) left them, hostile ones
    between good ones of another project: every good one is written, every hostile one
    written repaired or quarantined, and the spool is empty.
    """
    project, other = f"s-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    good = [letter(other) for _ in range(30)]
    hostile = [(fields, raw) for fields in hostile_letters(project, 20, seed=2)
               if (raw := spoolable(fields))]
    # NOT NULL columns missing: refused whatever the repair, so it must be quarantined.
    incomplete = {"task_id": str(uuid.uuid4()), "project_id": project, "attempts": 1}
    items = [raw for _, raw in hostile] + [json.dumps(incomplete)]
    items.insert(7, "{not json")
    items.insert(3, "[" * 100_000 + "]" * 100_000)
    mixed = [item for pair in itertools.zip_longest(
        items, [spoolable(fields) for fields in good]) for item in pair if item]
    client = get_redis()
    client.delete(SPOOL_KEY)
    client.rpush(SPOOL_KEY, *mixed)

    drained = store.drain_spool()

    assert client.llen(SPOOL_KEY) == 0
    assert set(rows_of([fields["task_id"] for fields in good])) == {
        fields["task_id"] for fields in good}
    hostile_ids = [stored_id(fields) for fields, _ in hostile]
    written, quarantined = rows_of(hostile_ids), quarantined_of([*hostile_ids, None])
    assert set(hostile_ids) <= set(written) | set(quarantined)
    assert drained.written == len(good) + len(written)
    assert incomplete["task_id"] in quarantined_of([incomplete["task_id"]])
    assert drained.quarantined == len(quarantined) + 3  # + the incomplete and two non-letters

    # The quarantine is visible, scoped like every DLQ route.
    own = API(web, make_token("ada", project)).get("/api/dlq/quarantine")
    assert own.status_code == 200
    assert incomplete["task_id"] in [item["task_id"] for item in own.json()["items"]]
    assert {item["project_id"] for item in own.json()["items"]} == {project}
    foreign = API(web, make_token("ada", other)).get("/api/dlq/quarantine").json()["items"]
    assert incomplete["task_id"] not in [item["task_id"] for item in foreign]
    everything = API(web, make_token("ops", "*")).get("/api/dlq/quarantine", params={
        "limit": 500}).json()["items"]
    assert "{not json" in {item["payload"] for item in everything}


def counts_by_key() -> dict[tuple[str, str, str], int]:
    with session_scope() as session:
        return {(p, t, e): n for p, t, e, n in session.execute(
            select(DeadLetterCount.project_id, DeadLetterCount.task_name,
                   DeadLetterCount.exception_type, DeadLetterCount.dead)
            .where(DeadLetterCount.dead != 0))}


def counted_rows() -> dict[tuple[str, str, str], int]:
    with session_scope() as session:
        project = func.coalesce(DeadLetter.project_id, "")
        return {(p, t, e): n for p, t, e, n in session.execute(
            select(project, DeadLetter.task_name, DeadLetter.exception_type, func.count())
            .where(DeadLetter.status == "dead")
            .group_by(project, DeadLetter.task_name, DeadLetter.exception_type))}


def test_counts_stay_equal_to_a_count_through_every_kind_of_change() -> None:
    projects = [f"c{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    nowhere = f"nowhere-{uuid.uuid4().hex[:6]}"  # a queue no worker reads: replays wait there
    old = datetime.now(UTC) - timedelta(days=400)
    oldest_kept = datetime.now(UTC) - timedelta(days=299)
    rng = random.Random(3)
    ids: list[int] = []
    for i in range(60):
        died = old if i % 10 == 0 else oldest_kept if i % 10 == 1 else datetime.now(UTC)
        fields = letter(rng.choice(projects), queue=nowhere, died_at=died,
                        task_name=rng.choice(["k1.a", "k1.b"]),
                        exception_type=rng.choice(["TimeoutError", "HTTPError", "KeyError"]))
        ids.append(store.record(fields).letter_id)
        if i % 7 == 0:
            assert store.record(fields).outcome == "duplicate"
    store.record(letter(None, queue=nowhere))
    assert counts_by_key() == counted_rows()

    for letter_id in ids[2:12]:
        store.discard(letter_id)
    store.replay(ids[12])
    store.replay(ids[12], force=True)  # replayed → replayed: no change
    store.replay(ids[3], force=True)  # discarded → replayed: no change
    store.replay_matching(LetterFilter(project_id=projects[0], task="k1.a"))
    assert counts_by_key() == counted_rows()

    assert store.purge(LetterFilter(project_id=projects[1], exception="HTTPError",
                                    status=None)) > 0
    assert counts_by_key() == counted_rows()

    with session_scope() as session:
        total = session.scalar(select(func.count()).select_from(DeadLetter)) or 0
    removed = store.enforce_retention(max_age=timedelta(days=300), max_rows=total - 6 - 2)
    # the 400-day-old letters not purged, then the oldest left: 299-day-old ones, all ours
    assert removed["expired"] + removed["over_limit"] == 8 and removed["over_limit"] >= 2
    assert counts_by_key() == counted_rows()
    for project in projects:
        mine = {key: n for key, n in counted_rows().items() if key[0] == project}
        figures = store.stats(frozenset({project}))
        assert figures["depth"] == sum(mine.values())
        by_task = {task: sum(n for (_, t, _), n in mine.items() if t == task)
                   for task in {t for _, t, _ in mine}}
        assert figures["by_task"] == by_task
        # Old letters left behind would be other retention tests' "expired" ones.
        store.purge(LetterFilter(project_id=project, status=None))
    assert counts_by_key() == counted_rows()
    get_redis().delete(nowhere)


@pytest.mark.parametrize(("statement", "unreachable"), [
    ("SELECT 'a' || chr(0)", False),  # NUL in text: data exception (22)
    ("SELECT (repeat('[', 100000) || repeat(']', 100000))::jsonb", False),  # limit (54)
    ("SELECT 1/0", False),
    ("SELECT * FROM no_such_table", False),  # 42
])
def test_only_an_unreachable_database_is_an_outage(statement: str, unreachable: bool) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from k1.db import is_unreachable

    with pytest.raises(SQLAlchemyError) as refused, session_scope() as session:
        session.execute(text(statement))
    assert is_unreachable(refused.value) is unreachable, refused.value


def test_a_refused_connection_is_an_outage() -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from k1.db import is_unreachable, make_engine
    from tests.support import free_port

    engine = make_engine(f"postgresql://k1@127.0.0.1:{free_port()}/k1")
    with pytest.raises(SQLAlchemyError) as down, engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert is_unreachable(down.value)


def test_one_drain_at_a_time() -> None:
    from k1.recovery.dlq.spool import SPOOL_LOCK_KEY

    client = get_redis()
    client.delete(SPOOL_KEY)
    waiting = letter(f"l-{uuid.uuid4().hex[:8]}")
    client.rpush(SPOOL_KEY, spoolable(waiting) or "")
    other = client.lock(SPOOL_LOCK_KEY, timeout=30)
    assert other.acquire(blocking=False)
    try:
        assert store.drain_spool().written == 0  # another drain holds the lock
        assert client.llen(SPOOL_KEY) == 1
    finally:
        other.release()
    assert store.drain_spool().written == 1
    assert client.llen(SPOOL_KEY) == 0 and list(rows_of([waiting["task_id"]]))
    assert not client.exists(SPOOL_LOCK_KEY)  # released when done
