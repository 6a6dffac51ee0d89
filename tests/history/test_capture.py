"""History records ride the event publisher's flush: no round trip of their own."""

from __future__ import annotations

import json
from typing import Any

from k1.events import HISTORY, Publisher, make_event
from k1.history.capture import record
from k1.history.stream import RECORD_FIELD, STREAM_KEY
from k1.settings import get_settings

LINGER = 600.0  # s: the test's publisher never flushes by itself while the test runs


def stream_records(client: Any, count: int = 200) -> dict[str, dict[str, Any]]:
    """The newest records on the history stream, by record id."""
    entries = client.xrevrange(STREAM_KEY, count=count)
    parsed = [json.loads(fields[RECORD_FIELD.encode()]) for _entry_id, fields in entries]
    return {found["id"]: found for found in parsed}


def test_a_record_is_sent_in_the_round_trip_of_the_events_beside_it(
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
    started = make_event("started", task_id=f"task-{unique}", project_id="acme",
                         state="STARTED")
    started_record = record(started)

    assert publisher.publish([("task_event", started), (HISTORY, started_record)]) is True
    assert started_record["id"] not in stream_records(publisher.client)  # buffered

    assert publisher.flush() is True
    assert len(pipelines) == 1  # the event and the record, one round trip
    assert stream_records(publisher.client)[started_record["id"]] == started_record
    message = listener.get_message(timeout=5)
    assert message is not None and f"task-{unique}" in message["data"].decode()
    listener.close()
