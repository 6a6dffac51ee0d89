"""K1's broker transport (k1/broker.py) on a real Redis: a message is always in its queue
or recorded unacknowledged, whatever moment its consumer dies at; a fair queue takes
turns between projects."""

from __future__ import annotations

import base64
import contextlib
import json
import select
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub

from k1.broker import DOORBELL, RING, Transport, deferred, queue_lists, sub_queue
from k1.headers import PROJECT
from tests.support import RedisServer, free_port, wait_for


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


def own_records() -> dict[str, str]:
    """Transport options giving a connection unacknowledged records of its own (a restore
    or a count in a test must not meet the session workers' messages)."""
    prefix = f"test-unacked-{uuid.uuid4().hex[:8]}"
    return {"unacked_key": prefix, "unacked_index_key": f"{prefix}-index",
            "unacked_mutex_key": f"{prefix}-mutex"}


@pytest.fixture
def fair_connection(redis_server_: RedisServer, queue: Queue) -> Iterator[Connection]:
    """A connection on which ``queue`` is fair, with unacknowledged records of its own."""
    with Connection(redis_server_.url, transport=Transport,
                    transport_options={"fair_queues": [queue.name], **own_records()}
                    ) as connection:
        yield connection


def publish(connection: Connection, queue: Queue, count: int = 1,
            project: str | None = None) -> list[str]:
    bodies = [f"body-{uuid.uuid4().hex}" for _ in range(count)]
    producer = Producer(connection.default_channel, exchange=queue.exchange,
                        routing_key=queue.routing_key)
    for body in bodies:
        producer.publish(body, declare=[queue], serializer="json",
                         headers={PROJECT: project} if project else {})
    return bodies


def fetch_all(connection: Connection, queue: Queue) -> list[str]:
    """Every message's body, in the order the fetch script hands them out."""
    channel = connection.default_channel
    bodies = []
    while (fetched := channel._fetch([queue.name], record=False)) is not None:
        bodies.append(json.loads(base64.b64decode(json.loads(fetched[1])["body"])))
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


def test_a_fair_queue_takes_turns_between_projects_and_keeps_each_in_order(
        fair_connection, queue, redis_server_):
    flood = publish(fair_connection, queue, count=5, project="a")
    client = redis_server_.client()
    # Beat sends through kombu's publish batch: one transaction per flush.
    producer = Producer(fair_connection.default_channel, exchange=queue.exchange,
                        routing_key=queue.routing_key)
    other = [f"body-{uuid.uuid4().hex}" for _ in range(2)]
    with producer.batch(max_size=100):  # Redis commands: 5 or 6 per message
        for body in other:
            producer.publish(body, serializer="json", headers={PROJECT: "b"})
        assert not client.exists(sub_queue(queue.name, "b")), "not batched"
    plain = publish(fair_connection, queue, count=1)  # no project: the plain list
    assert client.zrange(RING.format(queue.name), 0, -1) == ["a", "b"]
    assert client.llen(sub_queue(queue.name, "a")) == 5 and client.llen(queue.name) == 1
    assert fair_connection.default_channel._size(queue.name) == 8

    # One per project per round, each project's own in the order sent.
    assert fetch_all(fair_connection, queue) == [
        flood[0], other[0], plain[0], flood[1], other[1], flood[2], flood[3], flood[4]]
    assert not client.exists(RING.format(queue.name)), "emptied sub-queues left the ring"


def test_messages_queued_before_fairness_take_their_turn_as_one_sub_queue(
        k1_connection, fair_connection, queue):
    before = publish(k1_connection, queue, count=3, project="a")  # fairness off: plain list
    after = publish(fair_connection, queue, count=2, project="b")
    assert fetch_all(fair_connection, queue) == [after[0], before[0], after[1], *before[1:]]


def test_a_consumer_killed_once_its_wait_was_answered_leaves_a_fair_message_queued(
        fair_connection, queue, redis_server_):
    client = redis_server_.client()
    publish(fair_connection, queue, project="a")
    channel = fair_connection.channel()
    channel.basic_consume(queue.name, no_ack=False, callback=lambda message: None,
                          consumer_tag="test")
    fair_connection.transport.cycle._register_BRPOP(channel)
    readable, _, _ = select.select([channel.client.connection._sock], [], [], 10)
    assert readable, "the wait was not answered although a message was published"
    channel.client.connection.disconnect()  # killed with the answer unread
    assert client.llen(sub_queue(queue.name, "a")) == 1
    assert client.zrange(RING.format(queue.name), 0, -1) == ["a"]


def test_a_message_restored_after_the_visibility_timeout_goes_back_to_its_project(
        fair_connection, queue, redis_server_):
    client = redis_server_.client()
    first, second = publish(fair_connection, queue, count=2, project="a")
    channel = fair_connection.channel()
    fetched = channel._fetch([queue.name])  # recorded unacknowledged; its consumer dies
    assert fetched is not None and fetched[2]
    assert client.zcard(RING.format(queue.name)) == 1 and client.llen(queue.name) == 0
    channel.qos.visibility_timeout = 0  # what the timeout's passing does, without the wait
    channel.qos.restore_visible(interval=1)
    assert client.hlen(channel.unacked_key) == 0, "the message was not restored"
    assert client.llen(queue.name) == 0, "restored into the plain list, not its project's"
    assert client.llen(sub_queue(queue.name, "a")) == 2
    # At the head of its project's list: delivered again before the one behind it.
    assert fetch_all(fair_connection, queue) == [first, second]


def test_purge_empties_every_sub_queue(fair_connection, queue, redis_server_):
    publish(fair_connection, queue, count=3, project="a")
    publish(fair_connection, queue, count=2, project="b")
    publish(fair_connection, queue, count=1)
    channel = fair_connection.default_channel
    assert channel.queue_purge(queue.name) == 6
    client = redis_server_.client()
    assert not client.exists(RING.format(queue.name), *queue_lists(queue.name, ["a", "b"]))
    assert channel._size(queue.name) == 0


def test_counters_get_their_expiry_once_per_bucket_not_per_message(tmp_path, queue):
    """A Redis of its own: its command statistics count this test's commands only."""
    server = RedisServer(free_port(), tmp_path / "redis", tmp_path).start()
    try:
        with Connection(server.url, transport=Transport) as connection:
            publish(connection, queue, count=20)
            assert len(fetch_all(connection, queue)) == 20
        client = server.client()
        expires = int(client.info("commandstats").get("cmdstat_expire", {}).get("calls", 0))
        # One bucket or two (the count may straddle a bucket's end), per side.
        assert 1 <= expires <= 4, f"{expires} EXPIREs for 20 messages published and fetched"
        assert all(client.ttl(key) > 0 for key in client.keys("k1:queues:*"))
    finally:
        server.stop()


def test_basic_get_takes_turns_too(fair_connection, queue, redis_server_):
    """Kombu's basic_get (a message taken without a consumer, e.g. ``Queue.get``) goes
    through the fetch script and kombu records it unacknowledged itself."""
    first, second = publish(fair_connection, queue, count=2, project="a")
    [other] = publish(fair_connection, queue, count=1, project="b")
    bound = queue(fair_connection.default_channel)
    taken = [bound.get(no_ack=False) for _ in range(3)]
    assert [message.payload for message in taken] == [first, other, second]
    unacked = redis_server_.client().hlen(fair_connection.default_channel.unacked_key)
    assert unacked == 3, "basic_get's messages are not recorded unacknowledged"
    for message in taken:
        message.ack()
    assert redis_server_.client().hlen(fair_connection.default_channel.unacked_key) == 0


def test_a_channel_builds_one_redis_client_for_all_its_commands(k1_connection, queue):
    """Kombu built a redis-py client for every publish, fetch and acknowledgement (~60 µs
    of CPU each under redis-py 8); a channel now keeps one per connection pool."""
    channel = k1_connection.default_channel
    built: list[object] = []

    class Counted(channel.Client):  # type: ignore[name-defined,misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    channel.Client = Counted
    publish(k1_connection, queue, count=20)
    assert len(fetch_all(k1_connection, queue)) == 20
    assert len(built) <= 1, f"{len(built)} Redis clients built for 20 publishes and 21 fetches"


# --------------------------------------------------------------- a worker's event loop


class EventLoop:
    """A consumer of ``queue`` on ``connection`` driven by kombu's event loop in this
    thread, as a worker's main process consumes (prefetch 1 here), with a producer of
    fanout events on a connection of its own (Celery's event dispatcher has one). Counts
    the round trips this thread makes to Redis, and the BRPOPs among them."""

    def __init__(self, connection: Connection, queue: Queue, url: str) -> None:
        self.connection, self.hub = connection, Hub()
        self.received: list[object] = []
        self.consumer = Consumer(connection.default_channel, [queue], accept=["json"],
                                 callbacks=[lambda body, message: self.received.append(message)])
        self.consumer.qos(prefetch_count=1)
        self.consumer.consume()
        self.events_connection = Connection(url, transport=Transport)
        self.events = Exchange(f"test-events-{uuid.uuid4().hex[:8]}", type="fanout")
        self.producer = Producer(self.events_connection.default_channel, exchange=self.events)
        self.producer.declare()
        connection.register_with_event_loop(self.hub)
        self.loop = self.hub.create_loop()
        self.trips, self.brpops = 0, 0
        self.looking = False  # the test's own reads: not counted

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        self.looking = True
        try:
            yield
        finally:
            self.looking = False

    def count_round_trips(self, monkeypatch: pytest.MonkeyPatch) -> None:
        send = redis.connection.AbstractConnection.send_packed_command
        loop_thread = threading.get_ident()

        def counted(connection: object, command: object, *args: object, **kwargs: object):
            if threading.get_ident() == loop_thread and not self.looking:
                self.trips += 1
                self.brpops += b"BRPOP" in (command if isinstance(command, bytes)
                                            else b"".join(command))  # type: ignore[arg-type]
            return send(connection, command, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                            counted)

    def run_until(self, done: Callable[[], bool], what: str, iterations: int = 40) -> None:
        for _ in range(iterations):
            next(self.loop)
            if done():
                return
        raise AssertionError(f"{what}: not after {iterations} iterations of the loop")

    def close(self) -> None:
        self.consumer.cancel()
        self.events_connection.close()
        self.hub.close()


@pytest.fixture
def event_loop(redis_server_: RedisServer, queue: Queue) -> Iterator[EventLoop]:
    with Connection(redis_server_.url, transport=Transport,
                    transport_options=own_records()) as connection:
        loop = EventLoop(connection, queue, redis_server_.url)
        try:
            yield loop
        finally:
            loop.close()
    assert not deferred.active(), "the closed connection left its loop attached"


def event_listener(redis_server_: RedisServer, loop: EventLoop) -> redis.client.PubSub:
    listener = redis_server_.client().pubsub(ignore_subscribe_messages=True)
    listener.psubscribe(f"*{loop.events.name}*")  # kombu's fanout topic names the exchange
    listener.get_message(timeout=5)  # the subscription's confirmation
    return listener


def test_the_event_loop_sends_a_message_s_ack_and_events_with_the_next_fetch(
        event_loop, queue, redis_server_, monkeypatch):
    """A worker's main process made three round trips to Redis a task, one after another,
    each stalling every task of the worker: the acknowledgement, the publish of its events
    and the fetch of the next message (waiting for the doorbell first). Under a backlog
    the event loop now makes one: the fetch, carrying the writes held since."""
    bodies = publish(event_loop.connection, queue, count=6)
    listener = event_listener(redis_server_, event_loop)
    client = redis_server_.client()
    unacked = event_loop.connection.default_channel.unacked_key
    event_loop.run_until(lambda: bool(event_loop.received), "the first message never came")
    event_loop.count_round_trips(monkeypatch)
    done: list[object] = []
    while len(done) < len(bodies):
        message = event_loop.received.pop(0)
        message.ack()  # as Celery's loop does when the task's result comes back
        event_loop.producer.publish({"done": message.payload})
        done.append(message.payload)
        if len(done) < len(bodies):
            with event_loop.uncounted():
                assert client.hlen(unacked) == 1, "the acknowledgement was not held"
            event_loop.run_until(lambda: bool(event_loop.received), "a message never came")
    assert done == bodies
    assert (event_loop.trips, event_loop.brpops) == (5, 0), (
        f"{event_loop.trips} round trips ({event_loop.brpops} BRPOPs) for 5 messages "
        "fetched under a backlog")
    # The backlog's last fetch cleared the doorbell: no token wakes a worker for nothing.
    assert not client.exists(DOORBELL.format(queue.name))
    # Nothing is held over the loop's wait: the next iteration sends the last ack and event.
    next(event_loop.loop)
    assert client.hlen(unacked) == 0, "an acknowledgement was held while the loop waited"
    events = [json.loads(listener.get_message(timeout=5)["data"]) for _ in bodies]
    assert [json.loads(base64.b64decode(event["body"]))["done"] for event in events] == bodies


def test_held_writes_are_sent_when_the_connection_closes(event_loop, queue, redis_server_):
    publish(event_loop.connection, queue)
    event_loop.run_until(lambda: bool(event_loop.received), "the message never came")
    event_loop.received.pop().ack()
    unacked = event_loop.connection.default_channel.unacked_key
    client = redis_server_.client()
    assert client.hlen(unacked) == 1, "the acknowledgement was not held"
    event_loop.connection.close()  # a worker that stops: its loop does not run again
    assert client.hlen(unacked) == 0, "the closing connection dropped a held acknowledgement"


def test_another_thread_writes_at_once(event_loop, queue, redis_server_):
    """Only the event loop's thread holds writes: nothing else would send them."""
    publish(event_loop.connection, queue)
    event_loop.run_until(lambda: bool(event_loop.received), "the message never came")
    message = event_loop.received.pop()
    acking = threading.Thread(target=message.ack)
    acking.start()
    acking.join()
    assert redis_server_.client().hlen(event_loop.connection.default_channel.unacked_key) == 0


def test_a_fetch_answered_as_the_connection_closes_puts_its_message_back(
        event_loop, queue, redis_server_):
    """The loop asks for the next message without waiting for the answer; a worker that
    stops before reading it must neither run that message nor leave it for the visibility
    timeout."""
    bodies = publish(event_loop.connection, queue, count=3)
    event_loop.run_until(lambda: bool(event_loop.received), "the first message never came")
    event_loop.received.pop().ack()
    event_loop.connection.transport.cycle.on_poll_start()  # asks for the second one
    client = redis_server_.client()
    unacked = event_loop.connection.default_channel.unacked_key
    wait_for(lambda: client.llen(queue.name) == 1, timeout=10,
             message="the loop did not ask for the next message")
    event_loop.connection.close()
    assert not event_loop.received, "handed to a consumer that is going away"
    assert client.hlen(unacked) == 0, "the fetched message was left unacknowledged"
    assert fetch_all_from(redis_server_, queue) == bodies[1:], "not back at the queue's head"


def test_the_loop_fetches_on_after_redis_forgot_the_fetch_script(tmp_path, queue):
    """A restarted Redis has no scripts: the loop's fetch, sent without waiting, falls back
    to loading it (a Redis of its own: SCRIPT FLUSH touches nothing else)."""
    server = RedisServer(free_port(), tmp_path / "redis", tmp_path).start()
    try:
        with Connection(server.url, transport=Transport) as connection:
            loop = EventLoop(connection, queue, server.url)
            try:
                bodies = publish(connection, queue, count=3)
                done: list[object] = []
                while len(done) < len(bodies):
                    loop.run_until(lambda: bool(loop.received), "a message never came")
                    message = loop.received.pop()
                    message.ack()
                    done.append(message.payload)
                    server.client().script_flush()
                assert done == bodies
            finally:
                loop.close()
    finally:
        server.stop()


def fetch_all_from(redis_server_: RedisServer, queue: Queue) -> list[str]:
    with Connection(redis_server_.url, transport=Transport) as connection:
        return fetch_all(connection, queue)


def test_a_task_run_in_the_loop_s_thread_publishes_at_once(event_loop, redis_server_):
    """A solo pool runs tasks in the event loop's thread: a task may wait for what it
    publishes, so its writes are not held for the loop's next turn."""
    from celery import Celery

    listener = event_listener(redis_server_, event_loop)
    app = Celery("test-broker-solo")

    @app.task
    def announce() -> bool:
        event_loop.producer.publish({"from": "a task"})
        return listener.get_message(timeout=5) is not None

    assert announce.apply().get(), "the task's publish was held until it returned"
