"""The broker transport: kombu's Redis transport, made so that a killed worker loses nothing
and one project's backlog does not hold up the others.

``celeryconfig.broker_transport`` names :class:`Transport`, for both URL schemes K1 accepts
(``redis://``, ``rediss://``; TLS still comes from ``broker_use_ssl``). It changes five
things in kombu's Redis transport:

**Fetching is atomic.** Kombu's worker takes a message with ``BRPOP``, which removes it
from the queue, and only then records it as unacknowledged (``unacked`` hash and
``unacked_index``) in a second command. A worker killed between the two, while the reply
sat in its socket or its event loop was busy, lost the message for good: under load that
window is open much of the time, and SIGKILLing a worker node lost a task in most runs
(tests/fault/test_workers.py). Here the worker blocks on a *doorbell* list instead (one
per queue; a publish rings it, i.e. pushes a token), and then one Lua script moves the
next message from the queue into the unacked records at once. Killed at any point, the
message is in its queue or unacknowledged, and comes back after the visibility timeout.
This is Sidekiq Pro's "reliable fetch" idea on kombu's own records.

A token is only a wake-up call: a lost one (a worker killed after taking it) or a message
from a producer that does not ring (a client without this transport, a restored message)
costs latency, not the message: a worker whose wait times out (``brpop_timeout``, 1 s)
fetches anyway, and a fetch that leaves messages behind rings again for the next worker.

**Fair queues take turns between projects** (transport option ``fair_queues``, from
``K1_FAIR_QUEUES``; docs/flow.md). A fair queue keeps one sub-queue per project (the
message's ``k1_project_id`` header): its own lists (one per priority step, as kombu keeps
a queue's), ``_k1.fair.<queue>\x06\x16<project>``. Work of no project stays in the
queue's plain lists, which are one more sub-queue (so are messages published before
fairness was on, or by a producer without this transport). The *ring*
``_k1.fair.<queue>`` is a sorted set of the sub-queues with messages waiting, scored by
when their turn comes. Publishing pushes the message to its project's list and adds the
project to the ring (``ZADD NX``: at the back) in one transaction. The fetch script takes
the ring's first sub-queue, pops its oldest message (its highest priority first), and
puts it at the back of the ring (score: Redis' clock), or drops it from the ring when
its lists are empty: one message per project per round, FIFO within a project, still in
the one atomic step above. Workers see one queue; every worker fetches fairly whatever
its own setting (the setting only decides where producers put messages), so switching
fairness on or off strands nothing. A message handed back (visibility timeout, worker
shutdown, a paused queue's hand-back) goes back to its project's list.

**A worker's event loop does not wait on Redis for each task.** A worker's main process
(prefork) runs Celery's event loop in one thread, and each of its round trips to Redis
stalls every task of the worker: with stock kombu a task cost three there, one after
another (its acknowledgement, the publish of its Celery events, and the fetch of the
next message after the doorbell's answer), and under a backlog of short tasks the loop
spent most of its time waiting for them while the pool processes waited for work. Here
the loop's acknowledgements and fanout publishes (Celery's events; not those of a task
that a solo pool runs in the loop's thread) are *held* (:data:`deferred`), and a channel
whose last fetch left messages in its queue does not wait on the doorbell: it sends the
held writes and the fetch script in one packet without waiting, and reads the answer
when its socket is readable, as it reads the doorbell's. What is still held when the
loop is about to wait for sockets (no fetch was due: the worker's processes are all busy,
or its queues are empty) is sent then, in one round trip; a closing channel sends it
first. A fetch answered as its channel closes puts its message back at the head of its
queue.

**A closed channel fails as a lost connection does** (see :meth:`Channel._connparams`).

**Each queue's traffic is counted where it already happens**, for ``GET /api/queues``'s
rates: a publish adds one to the queue's enqueue counter in the transaction that pushes
the message and rings the doorbell, the fetch script adds one to its dequeue counter: no
round trip of their own, on every producer and worker of the fleet, whatever sent the
message (the API, a retry, beat, the Conductor bridge). The counters are hashes per
``RATE_BUCKET`` seconds (field: the queue), kept for ``RATE_TTL`` (the expiry is set once
per bucket: by the fetch script when it creates a field, by a publishing channel on its
first publish in the bucket); a handed-back message fetched again counts as dequeued
again. A publish also stamps the message with its time (property ``ENQUEUED_AT``), from
which the oldest waiting message's age is read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from time import monotonic, time
from typing import Any

import redis
from celery import current_task
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import ConnectionError as RedisConnectionError

from k1 import headers

log = logging.getLogger(__name__)

DOORBELL = "_k1.doorbell.{}"  # per queue: tokens that wake a waiting worker
DOORBELL_TOKENS = 64  # more than idle workers ever wait on one queue: enough to wake them all
RING = "_k1.fair.{}"  # per queue: zset of its sub-queues with messages -> when their turn comes
SEP = kombu_redis.Channel.sep  # kombu's separator in list names (queue, priority step)
NO_PROJECT = ""  # the ring member for the queue's plain lists: work of no project
ENQUEUED = "k1:queues:enqueued:{}"  # per time bucket: hash queue -> messages published
DEQUEUED = "k1:queues:dequeued:{}"  # per time bucket: hash queue -> messages fetched
RATE_BUCKET = 10  # seconds per counter: a rate over the last minute spans 6 of them
RATE_TTL = 180  # seconds a counter is kept: the last minute's, with room for clock skew
ENQUEUED_AT = "k1_enqueued_at"  # message property: epoch seconds it was published
PIDBOX = ".pidbox"  # control replies' queues end so (kombu): not counted, not workload


def rate_bucket(ts: float) -> int:
    return int(ts // RATE_BUCKET)


def sub_queue(queue: str, member: str) -> str:
    """The name of ``queue``'s sub-queue for a ring member (a project; the queue itself for
    :data:`NO_PROJECT`), to which kombu's priority suffixes are added."""
    return f"{_sub_queue_prefix(queue)}{member}" if member else queue


def _sub_queue_prefix(queue: str) -> str:
    return f"{RING.format(queue)}{SEP}"


def queue_lists(queue: str, members: Iterable[str] = (),
                steps: Iterable[int] = kombu_redis.PRIORITY_STEPS) -> list[str]:
    """The Redis lists holding ``queue``'s messages: kombu keeps one per priority step
    (kombu's ``Channel._q_for_pri`` with its default steps; K1 sets none of its own), for
    the plain queue and for each of ``members``' sub-queues (a fair queue's ring)."""
    names = [queue, *(sub_queue(queue, member) for member in members if member)]
    steps = list(steps)
    return [f"{name}{SEP}{step}" if step else name for name in names for step in steps]


def waiting_lists(client: redis.Redis, queues: list[str]) -> dict[str, list[str]]:
    """Every list of each queue that may hold messages: its plain lists and those of the
    sub-queues in its ring (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.zrange(RING.format(queue), 0, -1)
    rings = pipe.execute()
    return {queue: queue_lists(queue, (bytes_to_str(member) for member in members))
            for queue, members in zip(queues, rings, strict=True)}


# KEYS: unacked hash, unacked index, the dequeue counter, the queues' doorbells (n), their
# rings (n), then the queues' plain lists in kombu's BRPOP order: priority first, then the
# queue cycle (list i belongs to queue (i - 1) % n + 1 and priority step (i - 1) // n + 1).
# ARGV: now, n, the counter's TTL, the number of priority steps, then per queue "1" if its
# consumer acknowledges (else the message is not recorded: a no_ack consumer, such as a
# control reply's, never acks it), then per queue its name as the counter's field ("" for
# one not counted), then per queue the prefix of its sub-queues' lists, then per priority
# step the suffix of its lists ("" for the first).
# A queue whose ring has members takes its turn at the first priority step: the message
# is the oldest of the ring's first sub-queue (its highest priority first), which then
# goes to the back of the ring (Redis' clock), or leaves it once empty. The plain lists
# join the ring as the member "" when they hold messages (work of no project, messages
# from before fairness or from other producers). The script builds the sub-queues' list
# names itself (K1 runs one Redis, not a cluster).
# Returns {queue number, message, 1 if recorded, 1 if its queue holds more} or nil. The
# message is recorded exactly as kombu's QoS records it ([payload, exchange, routing key]
# under its delivery tag), built from the raw text so that it is restored byte for byte.
# A queue found empty has its doorbell cleared: its tokens would wake workers for nothing.
FETCH = """
local n, steps = tonumber(ARGV[2]), tonumber(ARGV[4])
local function enc(value)
  if value == nil then return 'null' end
  return cjson.encode(value)
end
local function list(q, member, step)
  if member == '' then return KEYS[3 + 2 * n + (step - 1) * n + q] end
  return ARGV[4 + 2 * n + q] .. member .. ARGV[4 + 3 * n + step]
end
local function waiting(q, member)  -- Redis deletes an emptied list
  local lists = {}
  for step = 1, steps do lists[step] = list(q, member, step) end
  return redis.call('EXISTS', unpack(lists)) > 0
end
local function fair(q)
  local ring = KEYS[3 + n + q]
  local clock = redis.call('TIME')
  local turn = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  if not redis.call('ZSCORE', ring, '') and waiting(q, '') then
    redis.call('ZADD', ring, turn, '')
  end
  while true do
    local member = redis.call('ZRANGE', ring, 0, 0)[1]
    if not member then return nil end
    local raw
    for step = 1, steps do
      raw = redis.call('RPOP', list(q, member, step))
      if raw then break end
    end
    if raw and waiting(q, member) then
      redis.call('ZADD', ring, turn, member)
    else
      redis.call('ZREM', ring, member)
    end
    if raw then return raw end
  end
end
local rings = {}
for q = 1, n do rings[q] = redis.call('ZCARD', KEYS[3 + n + q]) > 0 end
local raw, queue
for step = 1, steps do
  for q = 1, n do
    if not rings[q] then
      raw = redis.call('RPOP', list(q, '', step))
    elseif step == 1 then
      raw = fair(q)
    end
    if raw then queue = q break end
  end
  if raw then break end
end
if not raw then
  for q = 1, n do redis.call('DEL', KEYS[3 + q]) end
  return nil
end
local field = ARGV[4 + n + queue]
if field ~= '' and redis.call('HINCRBY', KEYS[3], field, 1) == 1 then
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
local recorded = 0
if ARGV[4 + queue] == '1' then
  local ok, message = pcall(cjson.decode, raw)
  local properties = ok and type(message) == 'table' and message['properties']
  local tag = type(properties) == 'table' and properties['delivery_tag']
  if type(tag) == 'string' then
    local info = properties['delivery_info']
    if type(info) ~= 'table' then info = {} end
    local record = '[' .. raw .. ',' .. enc(info['exchange']) .. ','
                   .. enc(info['routing_key']) .. ']'
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[1], tag, record)
    recorded = 1
  end
end
-- More waiting in this queue and nobody woken for it: ring for the next worker.
local left = redis.call('ZCARD', KEYS[3 + n + queue]) > 0 or waiting(queue, '')
local doorbell = KEYS[3 + queue]
if not left then
  redis.call('DEL', doorbell)
elseif redis.call('LLEN', doorbell) == 0 then
  redis.call('LPUSH', doorbell, 1)
end
return {queue, raw, recorded, left and 1 or 0}
"""


Command = tuple[Any, ...]  # a Redis command and its arguments: ("HDEL", key, field)


class _Deferred:
    """The writes of a worker's event loop that need no answer, sent with its next fetch.

    Held writes are the loop's own, after the fact: a worker killed before they are sent
    loses acknowledgements (the messages, still recorded as unacknowledged, come back
    after the visibility timeout: at least once, as ``acks_late`` promises anyway) and
    events (best effort, as Celery's are). Any other thread or process writes at once.
    See the module's docstring.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a closing channel may flush from another thread
        self._loop: int | None = None  # the event loop's thread (none in a forked child)
        self._transport: Transport | None = None  # the one registered with that loop
        self._writes: dict[str, list[Command]] = {}  # per Redis: the held writes
        self._through: dict[str, Channel] = {}  # per Redis: the channel to send them on

    def attach(self, transport: Transport) -> None:
        """The calling thread runs the event loop of ``transport``'s connection."""
        self._transport, self._loop = transport, threading.get_ident()

    def detach(self, transport: Transport) -> None:
        """``transport``'s connection is closing: its loop is over (a new connection's
        registers again); its channels send what is held as they close."""
        if self._transport is transport:
            self._transport, self._loop = None, None

    def forget(self) -> None:
        """In a forked child: the parent's loop and writes are not its own."""
        self._loop, self._transport, self._writes, self._through = None, None, {}, {}
        self._lock = threading.Lock()

    def active(self) -> bool:
        """The caller is the event loop."""
        return self._loop == threading.get_ident()

    def holds(self) -> bool:
        """The caller's writes are held: the event loop's, not a task's (a solo pool runs
        tasks in the loop's thread, and a task may wait for what it sent)."""
        return self.active() and not current_task

    def hold(self, channel: Channel, *commands: Command) -> None:
        with self._lock:
            self._writes.setdefault(channel.redis_id, []).extend(commands)
            self._through[channel.redis_id] = channel

    def take(self, redis_id: str) -> list[Command]:
        with self._lock:
            return self._writes.pop(redis_id, [])

    def flush(self) -> None:
        """Send every held write (one round trip per Redis); never raises."""
        if not self._writes:
            return
        with self._lock:
            held, self._writes = self._writes, {}
            through = dict(self._through)
        for redis_id, commands in held.items():
            channel = through[redis_id]
            try:
                with channel.conn_or_acquire() as client:
                    pipe = client.pipeline(transaction=False)
                    for command in commands:
                        pipe.execute_command(*command)
                    pipe.execute()
            except Exception as exc:  # in the event loop: nothing may escape
                lost(commands, exc)


def lost(commands: list[Command], exc: BaseException) -> None:
    if commands:
        log.warning("%d held broker writes may not have been made (%s): %d "
                    "acknowledgements (their messages come back after the visibility "
                    "timeout) and %d events", len(commands), exc,
                    sum(command[0] == "HDEL" for command in commands),
                    sum(command[0] == "PUBLISH" for command in commands))


deferred = _Deferred()
os.register_at_fork(after_in_child=deferred.forget)


class QoS(kombu_redis.QoS):
    """Kombu's QoS, which does not write again what the fetch script has recorded, and
    whose acknowledgements made in the worker's event loop ride its next fetch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[str] = set()  # delivery tags the fetch script put in unacked

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # the in-memory part only
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        if deferred.holds():
            deferred.hold(self.channel, ("ZREM", self.unacked_index_key, delivery_tag),
                          ("HDEL", self.unacked_key, delivery_tag))
            virtual.QoS.ack(self, delivery_tag)  # the in-memory part now
        else:
            super().ack(delivery_tag)


class _PipelineBatch:
    """What kombu's ``_put`` takes as a publish batch, writing to one pipeline."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def add(self, name: str, *args: Any) -> None:
        getattr(self.pipeline, name)(*args)


class PublishBatch(kombu_redis.PublishBatch):
    """Kombu's publish batch (beat sends through one), flushed as a transaction: a fair
    queue's message and its ring entry are written together or not at all."""

    def __init__(self, channel: Any, max_size: int) -> None:
        super().__init__(channel, max_size)
        self.pipeline.transaction = True  # redis-py wraps execute() in MULTI/EXEC


class Channel(kombu_redis.Channel):
    QoS = QoS
    fair_queues: frozenset[str] = frozenset()  # queues whose producers file by project
    from_transport_options = (  # type: ignore[assignment]  # kombu's is inferred as exact
        *kombu_redis.Channel.from_transport_options, "fair_queues")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("K1's broker transport does not support global_keyprefix: "
                             "its fetch script names its keys itself")
        self.fair_queues = frozenset(self.fair_queues)
        self._fetching: list[str] = []  # the queues of the outstanding doorbell wait
        self._fetch_script: Any = None
        self._no_ack_queues: set[str] = set()  # consumed without acknowledgements
        self._expiring_bucket: int | None = None  # the counter bucket given its expiry
        self._commands: tuple[Any, Any] | None = None  # (pool, its client): conn_or_acquire
        self._backlog = False  # the last fetch left messages in its queue
        self._asked: list[Command] | None = None  # held writes sent with a fetch, unread
        # Which Redis this channel writes to: held writes of channels on the same one
        # travel together (a worker's events have a connection of their own).
        self.redis_id: str = self.connection.client.as_uri(include_password=True)

    @contextlib.contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """Kombu's, with one Redis client per connection pool instead of a new one for
        every command: kombu builds a redis-py client for each publish, fetch and
        acknowledgement, and building one costs ~60 µs of CPU under redis-py 8 (its table
        of response callbacks), a tenth of a no-op task's time in a worker's main process.
        A client is only a handle on its pool, which it shares safely between threads. The
        pool is still looked up on every call, so a closed channel fails as before
        (:meth:`_connparams`)."""
        if client:
            yield client
            return
        pool = self.pool
        commands = self._commands
        if commands is None or commands[0] is not pool:
            commands = self._commands = (pool, self._create_client())
        yield commands[1]

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        cancelled = super().basic_cancel(consumer_tag)
        if queue not in self._tag_to_queue.values():
            self._no_ack_queues.discard(queue)
        return cancelled

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._fetching = list(queues)
        connection = self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu's None
        self._asked = None
        if self._backlog and timeout is None and deferred.active():
            # The worker's loop, and the last fetch left messages: ask for the next one
            # now, with the writes held since, rather than wait for the doorbell first.
            # The answer is read as the doorbell's is, once the socket is readable.
            held = deferred.take(self.redis_id)
            keys, args = self._fetch_call(self._fetching)
            fetch = ("EVALSHA", self._script().sha, len(keys), *keys, *args)
            try:
                connection.send_packed_command(connection.pack_commands([*held, fetch]))
            except Exception as exc:
                lost(held, exc)
                raise
            self._asked = held
            return
        connection.send_command(
            "BRPOP", *(DOORBELL.format(queue) for queue in queues),
            self.brpop_timeout if timeout is None else timeout)

    def _brpop_read(self, **options: Any) -> bool:
        asked, self._asked = self._asked, None
        connection = self.client.connection
        try:
            try:
                if asked is None:
                    self.client.parse_response(connection, "BRPOP", **options)
                    if self._closing:  # the message stays queued: nobody is left to run it
                        raise virtual.Empty()
                    fetched = self._fetch(self._fetching)
                else:
                    fetched = self._read_answer(connection, asked)
            except self.connection_errors as exc:
                connection.disconnect()  # the next wait reconnects
                lost(asked or [], exc)
                raise
            if fetched is None:
                raise virtual.Empty()
            if self._closing and fetched[2]:
                # Fetched as the channel closes: back to the head of its queue, now
                # rather than after the visibility timeout.
                self.qos.restore_by_tag(loads(fetched[1])["properties"]["delivery_tag"])
                raise virtual.Empty()
            self._deliver_fetched(fetched)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's own read does
            self._flush_brpop_reauth()

    def _read_answer(self, connection: Any, held: list[Command]) -> tuple[str, str, bool] | None:
        """The answers to the held writes and the fetch sent by :meth:`_brpop_start`."""
        for command in held:
            try:
                connection.read_response()
            except redis.exceptions.ResponseError as exc:
                log.warning("held broker write %s failed: %s", command[0], exc)
        try:
            return self._fetched(self._fetching,
                                 self.client.parse_response(connection, "EVALSHA"))
        except redis.exceptions.NoScriptError:  # a restarted Redis has forgotten it
            return self._fetch(self._fetching)

    def _deliver_fetched(self, fetched: tuple[str, str, bool]) -> None:
        queue, raw, recorded = fetched
        payload = loads(raw)
        if recorded:
            self.qos.recorded.add(payload["properties"]["delivery_tag"])
        self._queue_cycle.rotate(queue)
        # How kombu's own _brpop_read hands a message over: the transport's delivery to
        # its consumers has no public name (kombu 5.7).
        self.connection._deliver(payload, queue)

    def _fetch(self, queues: list[str], record: bool = True) -> tuple[str, str, bool] | None:
        """Take the next message of ``queues`` (a fair queue's from the next project in its
        ring), moved into the unacked records unless ``record`` is false or its queue is
        consumed without acknowledgements: (queue, message, recorded)."""
        keys, args = self._fetch_call(queues, record)
        with self.conn_or_acquire() as client:
            found = self._script()(keys=keys, args=args, client=client)
        return self._fetched(queues, found)

    def _fetch_call(self, queues: list[str], record: bool = True
                    ) -> tuple[list[Any], list[Any]]:
        """The fetch script's keys and arguments (see :data:`FETCH`)."""
        steps = list(self.priority_steps)
        now = time()
        keys = [self.unacked_key, self.unacked_index_key, DEQUEUED.format(rate_bucket(now)),
                *(DOORBELL.format(queue) for queue in queues),
                *(RING.format(queue) for queue in queues),
                *(self._q_for_pri(queue, step) for step in steps for queue in queues)]
        acks = ["1" if record and queue not in self._no_ack_queues else "0"
                for queue in queues]
        return keys, [now, len(queues), RATE_TTL, len(steps), *acks,
                      *(_counted(queue) for queue in queues),
                      *(_sub_queue_prefix(queue) for queue in queues),
                      *(self._q_for_pri("", step) for step in steps)]

    def _fetched(self, queues: list[str], found: Any) -> tuple[str, str, bool] | None:
        if not found:
            self._backlog = False
            return None
        number, raw, recorded, left = found
        self._backlog = bool(left)
        return queues[int(number) - 1], bytes_to_str(raw), bool(recorded)

    def _script(self) -> Any:
        if self._fetch_script is None:
            with self.conn_or_acquire() as client:
                self._fetch_script = client.register_script(FETCH)
        return self._fetch_script

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        """Kombu's fanout publish (Celery's events), held for the next fetch when made in
        the worker's event loop (:class:`_Deferred`)."""
        if "_publish_batch" in kwargs or not deferred.holds():
            super()._put_fanout(exchange, message, routing_key, **kwargs)
            return
        payload = dumps(message)
        deferred.hold(self, *(("PUBLISH", topic, payload)
                              for topic in self._get_publish_topics(exchange, routing_key)))

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        """Kombu's ``basic_get`` (a message taken without a consumer), through the fetch
        script, so that a fair queue takes turns there too; kombu's QoS records it."""
        fetched = self._fetch([queue], record=False)
        with self.conn_or_acquire() as client:
            self._maybe_update_queues_expire(client, queue)
        if fetched is None:
            raise virtual.Empty()
        return loads(fetched[1])

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Kombu's publish (into the project's sub-queue for a fair queue), plus a token on
        the queue's doorbell and a count, in one transaction and round trip."""
        now = time()
        properties = message.get("properties") if isinstance(message, dict) else None
        if isinstance(properties, dict):
            properties[ENQUEUED_AT] = now
        batch = kwargs.pop("_publish_batch", None)
        if batch is not None:
            self._file(batch, queue, message, now)
            return
        with self.conn_or_acquire() as client, client.pipeline() as pipe:  # MULTI/EXEC
            self._file(_PipelineBatch(pipe), queue, message, now)
            pipe.execute()

    def _file(self, batch: Any, queue: str, message: Any, now: float) -> None:
        member = self._member(queue, message)
        if member is None:
            super()._put(queue, message, _publish_batch=batch)
        else:
            batch.add("lpush", self._list_for(queue, member, message), dumps(message))
            batch.add("zadd", RING.format(queue), {member: now}, True)  # NX: keeps its turn
        self._ring(batch.add, queue, now)

    def _member(self, queue: str, message: Any) -> str | None:
        """The ring member ``message`` is filed under in ``queue``: its project if the
        queue is fair and the message names one, else None (the plain lists)."""
        if queue not in self.fair_queues or not isinstance(message, dict):
            return None
        project = (message.get("headers") or {}).get(headers.PROJECT)
        return None if project in (None, NO_PROJECT) else str(project)

    def _list_for(self, queue: str, member: str, message: Any) -> str:
        pri = self._get_message_priority(message, reverse=False)
        return str(self._q_for_pri(sub_queue(queue, member), pri))

    def _ring(self, add: Any, queue: str, now: float) -> None:
        doorbell = DOORBELL.format(queue)
        add("lpush", doorbell, 1)
        add("ltrim", doorbell, 0, DOORBELL_TOKENS - 1)
        if _counted(queue):
            bucket = rate_bucket(now)
            counter = ENQUEUED.format(bucket)
            add("hincrby", counter, queue, 1)
            if bucket != self._expiring_bucket:  # the first publish of this channel in it
                add("expire", counter, RATE_TTL)
                self._expiring_bucket = bucket

    def _do_restore_message(self, payload: Any, exchange: str, routing_key: str, pipe: Any,
                            leftmost: bool = False) -> None:
        """Kombu's restore of an unacknowledged message (visibility timeout, shutdown, a
        requeue), which puts a fair queue's message back into its project's list: at its
        head (``rpush``: fetched next), or at its back for ``leftmost`` (a requeue)."""
        try:
            with contextlib.suppress(KeyError):
                payload["headers"]["redelivered"] = True
                payload["properties"]["delivery_info"]["redelivered"] = True
            for queue in self._lookup(exchange, routing_key):
                member = self._member(queue, payload)
                if member is not None:
                    pipe.zadd(RING.format(queue), {member: time()}, nx=True)
                (pipe.lpush if leftmost else pipe.rpush)(
                    self._list_for(queue, member or NO_PROJECT, payload), dumps(payload))
        except self.connection_errors:
            raise  # aborts the transaction, which would drop the record without requeueing
        except Exception:
            log.critical("Could not restore message: %r", payload, exc_info=True)

    def _size(self, queue: str) -> int:
        """Kombu's queue size (``queue_declare``, ``celery inspect``), of every sub-queue."""
        with self.conn_or_acquire() as client:
            lists = waiting_lists(client, [queue])[queue]
            with client.pipeline(transaction=False) as pipe:
                for key in lists:
                    pipe.llen(key)
                return sum(pipe.execute())

    def _purge(self, queue: str) -> int:
        """Kombu's purge, of every sub-queue: returns the messages removed."""
        with self.conn_or_acquire() as client:
            members = client.zrange(RING.format(queue), 0, -1)
            lists = queue_lists(queue, (bytes_to_str(m) for m in members), self.priority_steps)
            with client.pipeline() as pipe:
                for key in lists:
                    pipe.llen(key)
                    pipe.delete(key)
                if members:  # only those read: one that joined since keeps its message
                    pipe.zrem(RING.format(queue), *members)
                replies = pipe.execute()
        return sum(replies[0:2 * len(lists):2])

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self._purge(queue)
        super()._delete(queue, *args, **kwargs)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        if super()._has_queue(queue, **kwargs):
            return True
        with self.conn_or_acquire() as client:
            return bool(client.exists(RING.format(queue)))

    def create_publish_batch(self, max_size: int) -> PublishBatch:
        return PublishBatch(self, max_size)

    def close(self) -> None:
        deferred.flush()  # this channel's held acknowledgements, before it goes
        super().close()

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """Kombu's connection parameters; a connection error once the channel is closed.

        When Redis goes away, Celery (5.7) collects the worker's broker connection, which
        detaches the transport from it, and closes it again; messages delivered on the old
        channel are still acknowledged through it when their tasks end, after the worker
        reconnected. Kombu's channel then builds a new Redis pool from the detached
        connection and fails with ``AttributeError: 'NoneType' object has no attribute
        'hostname'``, which no caller expects: Celery called it an unrecoverable error and
        the worker exited instead of reconnecting (tests/fault/test_redis.py). A
        connection error is what every caller handles: the close is ignored, the late ack
        is logged, and the message, still unacknowledged in Redis, comes back after the
        visibility timeout.
        """
        if self.connection.client is None:
            raise RedisConnectionError("this channel's broker connection is closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
        return params


def _counted(queue: str) -> str:
    """The queue's name as its counters' field, "" for one not counted (control replies)."""
    return "" if queue.endswith(PIDBOX) else queue


class MultiChannelPoller(kombu_redis.MultiChannelPoller):
    def on_poll_start(self) -> None:
        """Kombu's start of a loop iteration's wait (where a channel with a backlog
        fetches at once), then every write still held is sent: the loop never sleeps on
        held writes."""
        super().on_poll_start()
        deferred.flush()


class Transport(kombu_redis.Transport):
    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()  # type: ignore[assignment]  # kombu types it so

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Kombu's, and this thread is now the worker's event loop (:class:`_Deferred`)."""
        super().register_with_event_loop(connection, loop)
        deferred.attach(self)

    def close_connection(self, connection: Any) -> None:
        deferred.detach(self)
        super().close_connection(connection)
