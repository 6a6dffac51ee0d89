"""Effects that happen once per idempotency key (k1.tasks.effects), on real Redis, the real
stand-in external service and a real worker."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest
import redis.client
import requests

from k1.tasks.effects import Effects, effect_key
from tests.support import RedisServer

pytestmark = pytest.mark.usefixtures("services")


def test_a_redis_effect_happens_once_and_its_result_is_kept(redis_server: RedisServer) -> None:
    client, target = redis_server.client(), f"t:{uuid.uuid4()}"
    calls = []

    def add(pipe: redis.client.Pipeline, current: Mapping[str, str | None]) -> int:
        calls.append(current[target])
        total = int(current[target] or 0) + 5
        pipe.set(target, total)
        return total

    effects = Effects(f"key-{uuid.uuid4()}")
    assert effects.redis("add", add, watch=[target]) == 5
    assert effects.redis("add", add, watch=[target]) == 5  # a rerun: the kept result
    assert calls == [None] and client.get(target) == "5"
    assert effects.done("add") and not effects.done("other")
    # Another name, or another key, is another effect.
    assert effects.redis("add-again", add, watch=[target]) == 10
    assert Effects(f"key-{uuid.uuid4()}").redis("add", add, watch=[target]) == 15


def test_a_redis_effect_and_its_ledger_entry_happen_together_or_not_at_all(
        redis_server: RedisServer) -> None:
    client, target = redis_server.client(), f"t:{uuid.uuid4()}"
    effects = Effects(f"key-{uuid.uuid4()}")

    def broken(pipe: redis.client.Pipeline, current: Mapping[str, str | None]) -> int:
        pipe.set(target, "written")
        raise RuntimeError("the task dies while queueing its writes")

    with pytest.raises(RuntimeError):
        effects.redis("write", broken, watch=[target])
    assert client.get(target) is None and not effects.done("write")


def test_a_redis_effect_rereads_what_changed_under_it(redis_server: RedisServer) -> None:
    client, target = redis_server.client(), f"t:{uuid.uuid4()}"
    seen = []

    def add(pipe: redis.client.Pipeline, current: Mapping[str, str | None]) -> int:
        seen.append(current[target])
        if len(seen) == 1:  # another process writes between our read and our EXEC
            client.set(target, 100)
        total = int(current[target] or 0) + 1
        pipe.set(target, total)
        return total

    assert Effects(f"key-{uuid.uuid4()}").redis("add", add, watch=[target]) == 101
    assert seen == [None, "100"] and client.get(target) == "101"


def test_an_external_effect_is_called_once_with_a_stable_key() -> None:
    effects = Effects(f"key-{uuid.uuid4()}")
    keys: list[str] = []

    def call(key: str) -> dict[str, str]:
        keys.append(key)
        return {"charged": key}

    first = effects.external("charge", call)
    assert effects.external("charge", call) == first == {"charged": keys[0]}
    assert keys == [effect_key(effects.idempotency_key, "charge")] == [effects.key("charge")]
    assert effects.key("charge") != effects.key("refund")
    assert effects.key("charge") != Effects(f"key-{uuid.uuid4()}").key("charge")
    # A failed call keeps nothing: the next run calls again, with the same key.
    with pytest.raises(ValueError):
        effects.external("refund", lambda key: (keys.append(key), int("x")))
    assert effects.external("refund", lambda key: (keys.append(key), "ok")[1]) == "ok"
    assert keys[1:] == [effects.key("refund")] * 2


def test_the_external_service_answers_a_repeated_key_from_its_record(
        external_service: str) -> None:
    key = str(uuid.uuid4())

    def analyze() -> requests.Response:
        return requests.post(f"{external_service}/analyze", timeout=5,
                             json={"project_id": "acme", "data_path": "s3://b/x.csv"},
                             headers={"Idempotency-Key": key})

    first, second = analyze(), analyze()
    assert first.json() == second.json() and second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    record = requests.get(f"{external_service}/_control/keys/{key}", timeout=5).json()
    assert record == {"key": key, "analysed": 1, "replays": 1}


def test_analyze_profile_calls_the_service_once_per_idempotency_key(
        worker: object, external_service: str) -> None:
    from k1 import headers
    from k1.tasks.analysis import analyze_profile

    key = f"profile-{uuid.uuid4()}"
    effect = Effects(key).key("analyze")
    # A run that called the service and died before its ledger write: the service has
    # analysed this effect's key already.
    requests.post(f"{external_service}/analyze", timeout=5, headers={"Idempotency-Key": effect},
                  json={"project_id": "acme", "data_path": "s3://b/p.csv"}).raise_for_status()

    def run() -> dict:
        result = analyze_profile.apply_async(kwargs={"project_id": "acme",
                                                     "data_path": "s3://b/p.csv"},
                                             headers={headers.IDEMPOTENCY_KEY: key})
        return result.get(timeout=60)

    first, second = run(), run()  # the rerun, and a second run with the same key
    assert first == second and first["data_path"] == "s3://b/p.csv"
    record = requests.get(f"{external_service}/_control/keys/{effect}", timeout=5).json()
    # Analysed once; the run after the "crash" was answered from the service's record,
    # and the last run from K1's ledger without calling at all.
    assert record == {"key": effect, "analysed": 1, "replays": 1}


@pytest.fixture
def effect_rows() -> str:
    """A table for the test's database effects."""
    from k1.db import get_engine

    table = f"effect_rows_{uuid.uuid4().hex[:8]}"
    with get_engine().begin() as connection:
        connection.exec_driver_sql(f"CREATE TABLE {table} (effect text, run text)")
    return table


def rows(table: str) -> list[tuple[str, str]]:
    from k1.db import get_engine

    with get_engine().connect() as connection:
        return [tuple(r) for r in connection.exec_driver_sql(f"SELECT * FROM {table}")]


def test_a_database_effect_commits_with_its_ledger_row_once(effect_rows: str) -> None:
    from sqlalchemy import text

    effects = Effects(f"key-{uuid.uuid4()}")

    def insert(run: str):
        def effect(session) -> str:
            session.execute(text(f"INSERT INTO {effect_rows} VALUES ('invoice', :run)"),
                            {"run": run})
            return run
        return effect

    def broken(session) -> None:
        session.execute(text(f"INSERT INTO {effect_rows} VALUES ('refund', 'broken')"))
        raise RuntimeError("the task dies after its statement, before the commit")

    assert effects.sql("invoice", insert("first")) == "first"
    assert effects.sql("invoice", insert("second")) == "first"  # a rerun: the kept result
    with pytest.raises(RuntimeError):
        effects.sql("refund", broken)
    assert rows(effect_rows) == [("invoice", "first")]


def test_concurrent_runs_of_a_database_effect_leave_one(effect_rows: str) -> None:
    import threading

    from sqlalchemy import text

    effects = Effects(f"key-{uuid.uuid4()}")
    both_inside = threading.Barrier(2, timeout=20)
    results: dict[str, str] = {}

    def run(name: str) -> None:
        def effect(session) -> str:
            session.execute(text(f"INSERT INTO {effect_rows} VALUES ('invoice', :run)"),
                            {"run": name})
            both_inside.wait()  # both did the effect before either writes its ledger row
            return name
        results[name] = effects.sql("invoice", effect)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(set(results.values())) == 1 and set(results) == {"a", "b"}, results
    assert rows(effect_rows) == [("invoice", results["a"])]
