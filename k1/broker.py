"""The broker transport: kombu's Redis transport, made so that a killed worker loses nothing.

``celeryconfig.broker_transport`` names :class:`Transport`, for both URL schemes K1 accepts
(``redis://``, ``rediss://``; TLS still comes from ``broker_use_ssl``). It changes two
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

**A closed channel fails as a lost connection does** (see :meth:`Channel._connparams`).

**Each queue's traffic is counted where it already happens**, for ``GET /api/queues``'s
rates: a publish adds one to the queue's enqueue counter in the pipeline that pushes the
message and rings the doorbell, the fetch script adds one to its dequeue counter: no round
trip of their own, on every producer and worker of the fleet, whatever sent the message
(the API, a retry, beat, the Conductor bridge). The counters are hashes per
``RATE_BUCKET`` seconds (field: the queue), kept for ``RATE_TTL``; a handed-back message
fetched again counts as dequeued again. A publish also stamps the message with its time
(property ``ENQUEUED_AT``), from which the oldest waiting message's age is read.
"""

from __future__ import annotations

from time import monotonic, time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import loads
from redis.exceptions import ConnectionError as RedisConnectionError

DOORBELL = "_k1.doorbell.{}"  # per queue: tokens that wake a waiting worker
DOORBELL_TOKENS = 64  # more than idle workers ever wait on one queue: enough to wake them all
ENQUEUED = "k1:queues:enqueued:{}"  # per time bucket: hash queue -> messages published
DEQUEUED = "k1:queues:dequeued:{}"  # per time bucket: hash queue -> messages fetched
RATE_BUCKET = 10  # seconds per counter: a rate over the last minute spans 6 of them
RATE_TTL = 180  # seconds a counter is kept: the last minute's, with room for clock skew
ENQUEUED_AT = "k1_enqueued_at"  # message property: epoch seconds it was published
PIDBOX = ".pidbox"  # control replies' queues end so (kombu): not counted, not workload


def rate_bucket(ts: float) -> int:
    return int(ts // RATE_BUCKET)


def queue_lists(queue: str) -> list[str]:
    """The Redis lists holding ``queue``'s messages: kombu keeps one per priority step
    (kombu's ``Channel._q_for_pri`` with its default steps; K1 sets none of its own)."""
    return [f"{queue}{Channel.sep}{step}" if step else queue
            for step in kombu_redis.PRIORITY_STEPS]

# KEYS: unacked hash, unacked index, the dequeue counter, the queues' doorbells (n), then
# the queues' lists in the order to try them (kombu's BRPOP order: priority first, then
# the queue cycle).
# ARGV: now, n, the counter's TTL, then per queue "1" if its consumer acknowledges (else
# the message is not recorded: a no_ack consumer, such as a control reply's, never acks
# it), then per queue its name as the counter's field ("" for one not counted), then per
# list the number (1..n) of its queue (ARGV[i + n] goes with KEYS[i]).
# Returns {list key, message, 1 if recorded} or nil. The message is recorded exactly as
# kombu's QoS records it ([payload, exchange, routing key] under its delivery tag), built
# from the raw text so that it is restored byte for byte.
FETCH = """
local n = tonumber(ARGV[2])
local function enc(value)
  if value == nil then return 'null' end
  return cjson.encode(value)
end
for i = 4 + n, #KEYS do
  local raw = redis.call('RPOP', KEYS[i])
  if raw then
    local queue = tonumber(ARGV[i + n])
    local field = ARGV[3 + n + queue]
    if field ~= '' then
      redis.call('HINCRBY', KEYS[3], field, 1)
      redis.call('EXPIRE', KEYS[3], ARGV[3])
    end
    local recorded = 0
    if ARGV[3 + queue] == '1' then
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
    local left = 0
    for j = 4 + n, #KEYS do
      if tonumber(ARGV[j + n]) == queue then left = left + redis.call('LLEN', KEYS[j]) end
    end
    local doorbell = KEYS[3 + queue]
    if left > 0 and redis.call('LLEN', doorbell) == 0 then redis.call('LPUSH', doorbell, 1) end
    return {KEYS[i], raw, recorded}
  end
end
return nil
"""


class QoS(kombu_redis.QoS):
    """Kombu's QoS, which does not write again what the fetch script has recorded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.recorded: set[str] = set()  # delivery tags the fetch script put in unacked

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # the in-memory part only
        else:
            super().append(message, delivery_tag)


class _PipelineBatch:
    """What kombu's ``_put`` takes as a publish batch, writing to one pipeline."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def add(self, name: str, *args: Any) -> None:
        getattr(self.pipeline, name)(*args)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("K1's broker transport does not support global_keyprefix: "
                             "its fetch script names its keys itself")
        self._fetching: list[str] = []  # the queues of the outstanding doorbell wait
        self._fetch_script: Any = None
        self._no_ack_queues: set[str] = set()  # consumed without acknowledgements

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
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # kombu's None
        self.client.connection.send_command(
            "BRPOP", *(DOORBELL.format(queue) for queue in queues),
            self.brpop_timeout if timeout is None else timeout)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next wait reconnects
                raise
            if self._closing:  # the message stays queued: nobody is left to run it
                raise virtual.Empty()
            fetched = self._fetch(self._fetching)
            if fetched is None:
                raise virtual.Empty()
            key, raw, recorded = fetched
            payload = loads(raw)
            if recorded:
                self.qos.recorded.add(payload["properties"]["delivery_tag"])
            queue = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's own read does
            self._flush_brpop_reauth()

    def _fetch(self, queues: list[str]) -> tuple[str, str, bool] | None:
        """Take the next message of ``queues``, moved into the unacked records unless its
        queue is consumed without acknowledgements: (list, message, recorded)."""
        lists = [(self._q_for_pri(queue, pri), number)
                 for pri in self.priority_steps for number, queue in enumerate(queues, 1)]
        now = time()
        keys = [self.unacked_key, self.unacked_index_key, DEQUEUED.format(rate_bucket(now)),
                *(DOORBELL.format(queue) for queue in queues), *(key for key, _ in lists)]
        acks = ["0" if queue in self._no_ack_queues else "1" for queue in queues]
        args = [now, len(queues), RATE_TTL, *acks, *(_counted(queue) for queue in queues),
                *(n for _, n in lists)]
        with self.conn_or_acquire() as client:
            if self._fetch_script is None:
                self._fetch_script = client.register_script(FETCH)
            found = self._fetch_script(keys=keys, args=args, client=client)
        if not found:
            return None
        key, raw, recorded = found
        return (key.decode() if isinstance(key, bytes) else key,
                raw.decode() if isinstance(raw, bytes) else raw, bool(recorded))

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """Kombu's publish, plus a token on the queue's doorbell and a count, in one round
        trip."""
        now = time()
        properties = message.get("properties") if isinstance(message, dict) else None
        if isinstance(properties, dict):
            properties[ENQUEUED_AT] = now
        batch = kwargs.get("_publish_batch")
        if batch is not None:
            super()._put(queue, message, **kwargs)
            self._ring(batch.add, queue, now)
            return
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            pipeline = _PipelineBatch(pipe)
            super()._put(queue, message, _publish_batch=pipeline)
            self._ring(pipeline.add, queue, now)
            pipe.execute()

    @staticmethod
    def _ring(add: Any, queue: str, now: float) -> None:
        doorbell = DOORBELL.format(queue)
        add("lpush", doorbell, 1)
        add("ltrim", doorbell, 0, DOORBELL_TOKENS - 1)
        if _counted(queue):
            counter = ENQUEUED.format(rate_bucket(now))
            add("hincrby", counter, queue, 1)
            add("expire", counter, RATE_TTL)

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


class Transport(kombu_redis.Transport):
    Channel = Channel
