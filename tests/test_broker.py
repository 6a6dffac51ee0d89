"""K1's broker transport (k1/broker.py) on a real Redis: a message is always in its queue
or recorded unacknowledged, whatever moment its consumer dies at."""

from __future__ import annotations

import contextlib
import json
import select
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Producer, Queue

from k1.broker import DOORBELL, Transport
from tests.support import RedisServer


@pytest.fixture
def redis_server_(services: dict[str, object]) -> RedisServer:
    server = services["redis"]
    assert isinstance(server, RedisServer)
    return server


@pytest.fixture
def queue() -> Queue:
    name = f"test-broker-{uuid.uuid4().hex[:8]}"
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


@pytest.fixture
def k1_connection(redis_server_: RedisServer) -> Iterator[Connection]:
    with Connection(redis_server_.url, transport=Transport) as connection:
        yield connection


def publish(connection: Connection, queue: Queue, count: int = 1) -> list[str]:
    bodies = [f"body-{uuid.uuid4().hex}" for _ in range(count)]
    producer = Producer(connection.default_channel, exchange=queue.exchange,
                        routing_key=queue.routing_key)
    for body in bodies:
        producer.publish(body, declare=[queue], serializer="json")
    return bodies


def test_a_consumer_killed_once_its_wait_was_answered_leaves_the_message_queued(
        k1_connection, queue, redis_server_):
    client = redis_server_.client()
    publish(k1_connection, queue)
    channel = k1_connection.channel()
    channel.basic_consume(queue.name, no_ack=False, callback=lambda message: None,
                          consumer_tag="test")
    k1_connection.transport.cycle._register_BRPOP(channel)  # how a worker waits for work
    socket = channel.client.connection._sock
    readable, _, _ = select.select([socket], [], [], 10)
    assert readable, "the wait was not answered although a message was published"
    # The worker dies here, with the answer unread (a SIGKILL runs no more of its code).
    channel.client.connection.disconnect()
    # Stock kombu BRPOPs the queue itself: its answer held the message, which was gone.
    assert client.llen(queue.name) == 1, "the message left its queue before it was recorded"


def test_a_fetched_message_is_recorded_unacknowledged_in_the_same_step(
        k1_connection, queue, redis_server_):
    client = redis_server_.client()
    publish(k1_connection, queue)
    channel = k1_connection.channel()
    fetched = channel._fetch([queue.name])
    assert fetched is not None
    key, raw, recorded = fetched
    payload = json.loads(raw)
    assert recorded
    tag = payload["properties"]["delivery_tag"]
    assert key == queue.name and client.llen(queue.name) == 0
    recorded, exchange, routing_key = json.loads(client.hget(channel.unacked_key, tag))
    assert (recorded, exchange, routing_key) == (payload, queue.name, queue.routing_key)
    assert client.zscore(channel.unacked_index_key, tag) is not None
    assert channel._fetch([queue.name]) is None  # nothing left


def test_every_message_is_consumed_once_even_from_a_producer_that_does_not_ring(
        k1_connection, queue, redis_server_):
    with Connection(redis_server_.url) as stock:  # kombu's own transport: no doorbell
        bodies = publish(stock, queue, count=5)
    assert not redis_server_.client().exists(DOORBELL.format(queue.name))
    received: list[str] = []
    with k1_connection.Consumer(queue, accept=["json"],
                                callbacks=[lambda body, message: (received.append(body),
                                                                  message.ack())]):
        for _ in range(20):  # each wait ends within brpop_timeout (1 s) without a token
            if len(received) == len(bodies):
                break
            with contextlib.suppress(TimeoutError):
                k1_connection.drain_events(timeout=2)
    assert sorted(received) == sorted(bodies)
    unacked = redis_server_.client().hvals(k1_connection.default_channel.unacked_key)
    assert [raw for raw in unacked if json.loads(raw)[2] == queue.routing_key] == [], (
        "acknowledged messages are still recorded as unacknowledged")


def test_a_consumer_without_acknowledgements_leaves_no_unacknowledged_record(
        k1_connection, queue, redis_server_):
    """Such a consumer (a control command's reply, for one) never acks: a record would be
    restored after the visibility timeout, the message delivered a second time."""
    publish(k1_connection, queue, count=2)
    received: list[object] = []
    with k1_connection.Consumer(queue, accept=["json"], no_ack=True,
                                callbacks=[lambda body, message: received.append(body)]):
        for _ in range(20):
            if len(received) == 2:
                break
            with contextlib.suppress(TimeoutError):
                k1_connection.drain_events(timeout=2)
    assert len(received) == 2
    unacked = redis_server_.client().hvals(k1_connection.default_channel.unacked_key)
    assert [raw for raw in unacked if json.loads(raw)[2] == queue.routing_key] == []
