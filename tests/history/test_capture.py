"""A task transition is written once: its history record, on the stream, in the round trip
of the events beside it; its Socket.IO events are derived from the record."""

from __future__ import annotations

import json
from typing import Any

from k1.events import HISTORY, Publisher, events_of, make_event, metrics
from k1.history.capture import received, record, submitted
from k1.history.stream import RECORD_FIELD, RECORD_ONLY_FIELDS, STREAM_KEY
from k1.settings import get_settings

LINGER = 600.0  # s: the test's publisher never flushes by itself while the test runs


def stream_records(client: Any, count: int = 200) -> dict[str, dict[str, Any]]:
    """The newest records on the history stream, by record id."""
    entries = client.xrevrange(STREAM_KEY, count=count)
    parsed = [json.loads(fields[RECORD_FIELD.encode()]) for _entry_id, fields in entries]
    return {found["id"]: found for found in parsed}


def test_a_transition_is_one_record_sent_in_the_round_trip_of_the_events_beside_it(
        services: dict[str, object], unique: str) -> None:
    publisher = Publisher(get_settings().redis_url, flush_linger=LINGER)
    pipelines: list[Any] = []
    make_pipeline = publisher.client.pipeline

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipelines.append(make_pipeline(*args, **kwargs))
        return pipelines[-1]

    publisher.client.pipeline = counted_pipeline
    listener = publisher.client.pubsub()
    listener.subscribe(publisher.channel)
    listener.get_message(timeout=5)  # the subscription's confirmation
    counted = metrics.KEY.format(family="tasks")
    started_before = int(publisher.client.hget(counted, "started") or 0)
    breaker = make_event("opened", name=f"breaker-{unique}")
    started = record(make_event("started", task_id=f"task-{unique}", project_id="acme",
                                state="STARTED"))

    assert publisher.publish([("breaker_state", breaker), (HISTORY, started)]) is True
    assert started["id"] not in stream_records(publisher.client)  # buffered

    assert publisher.flush() is True
    assert len(pipelines) == 1  # the event and the record, one round trip
    assert stream_records(publisher.client)[started["id"]] == started
    assert int(publisher.client.hget(counted, "started") or 0) == started_before + 1
    # Only the breaker's event went on the Socket.IO channel: the transition is the record.
    message = listener.get_message(timeout=5)
    assert message is not None and f"breaker-{unique}" in message["data"].decode()
    assert listener.get_message(timeout=0.2) is None
    listener.close()


class _Request:
    """A pool child's request context: the message headers as its own fields."""

    def __init__(self) -> None:
        self.delivery_info = {"routing_key": "celery"}
        self.args, self.kwargs = [1], {"project_id": "acme"}

    def get(self, key: str) -> Any:
        return {"k1_schedule": "nightly", "k1_conductor_workflow_id": "wf-1"}.get(key)


def test_the_events_of_a_record_are_its_task_event_without_what_only_history_keeps() -> None:
    event = make_event("received", task_id="t1", project_id="acme", state="RECEIVED",
                       worker="w@h")
    full = received(event, _Request())
    assert full["args"] == [1] and full["schedule"] == "nightly"
    assert set(full) - set(event) <= RECORD_ONLY_FIELDS  # every extra is history's own
    assert events_of(full) == [("task_event", event)]

    done = make_event("succeeded", task_id="t1", project_id="acme", state="SUCCESS",
                      result="7", runtime_ms=1.5)
    assert events_of(record(done)) == [("task_event", done), ("task_completed", done)]

    # A submission, or the worker handing a message back: history only, no live event.
    assert events_of(submitted("t1", "k1.tasks.demo.flaky", [], {}, project_id="acme",
                               user_id=None, headers=None, ts=0.0)) == []
    assert events_of(record(make_event("requeued", task_id="t1"))) == []


def test_a_result_write_carries_the_buffered_records_in_its_round_trip(
        services: dict[str, object], unique: str, monkeypatch: Any) -> None:
    """A worker's result write (Celery's STARTED, SUCCESS...) sends what the process has
    buffered in the same round trip (k1.celery.ResultBackend): the publisher's own client
    makes none."""
    from k1 import events
    from k1.celery import app

    publisher = Publisher(get_settings().redis_url, flush_linger=LINGER)
    monkeypatch.setattr(events, "_publisher", lambda: publisher)  # this process's publisher
    own: list[Any] = []
    make_pipeline = publisher.client.pipeline
    publisher.client.pipeline = lambda *a, **kw: own.append(1) or make_pipeline(*a, **kw)
    started = record(make_event("started", task_id=f"task-{unique}", project_id="acme",
                                state="STARTED"))
    publisher.publish([(HISTORY, started)])

    app.backend.store_result(f"task-{unique}", 7, "SUCCESS")

    assert own == [], "the publisher made a round trip of its own"
    assert stream_records(publisher.client)[started["id"]] == started
    assert app.backend.get_task_meta(f"task-{unique}")["result"] == 7
    assert not publisher.buffer


def test_a_result_write_that_fails_keeps_the_records_it_carried(
        services: dict[str, object], unique: str) -> None:
    """The write fails as Celery's would (Celery retries it); the records it carried are
    kept, and sent in order once Redis answers."""
    import redis

    from tests.support import free_port

    publisher = Publisher(get_settings().redis_url, flush_linger=LINGER, pause_after_failure=0)
    first, second = (record(make_event(kind, task_id=f"task-{unique}", project_id="acme"))
                     for kind in ("received", "started"))
    publisher.publish([(HISTORY, first), (HISTORY, second)])
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)

    with unreachable.pipeline() as pipe:
        pipe.set(f"result-{unique}", "SUCCESS")
        try:
            publisher.send_with(pipe)
        except redis.ConnectionError:
            pass
        else:
            raise AssertionError("a result write to a Redis that is down succeeded")

    assert [entry[1]["id"] for entry in publisher.kept] == [first["id"], second["id"]]
    assert publisher.flush() is True
    records = stream_records(publisher.client)
    assert records[first["id"]] == first and records[second["id"]] == second


def test_a_result_write_is_one_round_trip_and_never_overwrites_a_success(
        services: dict[str, object], unique: str) -> None:
    """Celery's backend reads the stored result before each write (a success must not be
    undone by a task delivered twice); K1's checks inside the write, one round trip."""
    from k1.celery import ResultBackend, app

    backend = ResultBackend(app=app, url=get_settings().redis_url)
    calls: list[str] = []
    client = backend.client
    execute_command, pipeline = client.execute_command, client.pipeline
    client.execute_command = lambda *a, **kw: calls.append(str(a[0])) or execute_command(*a, **kw)
    client.pipeline = lambda *a, **kw: calls.append("pipeline") or pipeline(*a, **kw)
    task_id = f"task-{unique}"

    backend.store_result(task_id, None, "STARTED")
    backend.store_result(task_id, 7, "SUCCESS")
    assert calls == ["pipeline", "pipeline"], f"round trips of two writes: {calls}"
    backend.store_result(task_id, None, "STARTED")  # delivered again after a lost worker
    backend.mark_as_failure(task_id, RuntimeError("late"))

    meta = backend.get_task_meta(task_id)
    assert (meta["status"], meta["result"]) == ("SUCCESS", 7)


def test_a_success_is_on_the_stream_as_soon_as_its_result_is(worker: Any, unique: str) -> None:
    """A pool process captures a task's ``succeeded`` before its SUCCESS write, which the
    record rides: whoever sees the result can read the record (before, it followed in
    the flusher's round trip, milliseconds later)."""
    from k1.celery import app

    task_id = f"task-{unique}"
    listener = app.backend.client.pubsub()
    listener.subscribe(app.backend.get_key_for_task(task_id))
    listener.get_message(timeout=5)  # the subscription's confirmation
    app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "acme"}, task_id=task_id)

    outcomes = []
    while (message := listener.get_message(timeout=30)) is not None:
        outcomes.append(json.loads(message["data"])["status"])
        if outcomes[-1] == "SUCCESS":
            break
    listener.close()
    assert outcomes[-1:] == ["SUCCESS"], f"the task's result writes: {outcomes}"
    types = [found["type"] for found in stream_records(app.backend.client).values()
             if found["task_id"] == task_id]
    assert "succeeded" in types, f"records on the stream when the result was: {types}"
