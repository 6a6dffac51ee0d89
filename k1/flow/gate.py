"""The fleet-wide counters behind limits: concurrency leases and rate (GCRA), each one
atomic Lua script on Redis, with the server's clock (workers' clocks may differ).

- Concurrency: a sorted set per limit and key, ``k1:flow:c:<name>:<key>``, of lease id ->
  expiry (ms). A slot is taken only if fewer than N unexpired leases remain; it is renewed
  every third of its lease while held (a thread in the holder's process) and removed when
  the run ends, so a SIGKILLed holder frees it when its lease runs out.
- Rate: GCRA with no burst, ``k1:flow:r:<name>:<key>`` holds the theoretical arrival time
  (ms). A caller may *reserve* the next start up to ``max_delay`` ahead: the starts are
  then spaced exactly ``1/rate`` apart, however many callers compete, without retries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from k1.connections import get_redis
from k1.flow.limits import PER_GLOBAL, PER_PROJECT, Limit

log = logging.getLogger(__name__)

CONCURRENCY_KEY = "k1:flow:c:{}:{}"
RATE_KEY = "k1:flow:r:{}:{}"
SATURATED_KEY = "k1:flow:s:{}:{}"  # set while a key is saturated: one event per change
KEYS_INDEX = "k1:flow:keys:{}"  # sorted set: key -> last use (ms), for GET /api/limits
KEY_MEMORY = 24 * 3600 * 1000  # ms a key stays listed after its last use

# KEYS: slots, saturated flag, keys index. ARGV: limit, lease ms, lease id, key.
# Returns {taken 0|1, slots in use, became saturated 0|1}.
ACQUIRE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[3], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[5]))
local used = redis.call('ZCARD', KEYS[1])
if used < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease)
  return {1, used + 1, 0}
end
-- Each refusal extends the flag, so a long saturation is announced once.
local fresh = 1 - redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[2], '1', 'PX', lease)
return {0, used, fresh}
"""
# KEYS: slots, saturated flag. ARGV: limit, lease id. Returns {slots in use, cleared 0|1}.
RELEASE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = redis.call('ZCARD', KEYS[1])
if used < tonumber(ARGV[1]) then
  return {used, redis.call('DEL', KEYS[2])}
end
return {used, 0}
"""
# KEYS: slots. ARGV: lease ms, lease id. Returns 1 if the lease was still held.
RENEW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
# KEYS: theoretical arrival time, keys index. ARGV: interval ms, max delay ms, key.
# Returns {reserved 0|1, delay ms as text}: reserved, the caller may start after delay.
RATE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + t[2] / 1000
local interval = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]))
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local delay = tat - now
if delay > tonumber(ARGV[2]) then return {0, tostring(delay)} end
redis.call('SET', KEYS[1], string.format('%.3f', tat + interval), 'PX',
           math.ceil(delay + interval) + 1000)
return {1, tostring(delay)}
"""


@dataclass(frozen=True)
class Slot:
    """A held concurrency slot."""

    limit: Limit
    key: str
    lease_id: str

    @property
    def redis_key(self) -> str:
        return CONCURRENCY_KEY.format(self.limit.name, self.key)

    @property
    def lease(self) -> float:
        return self.limit.lease

    def renew(self) -> bool:
        """Extend the lease; False if it had expired (another may hold the slot now)."""
        return bool(script(RENEW)(keys=[self.redis_key],
                                   args=[int(self.lease * 1000), self.lease_id]))

    def __str__(self) -> str:
        return f"limit {self.limit.name} lease {self.lease_id}"


KIND_CONCURRENCY, KIND_RATE = "concurrency", "rate"  # the part of a limit that refused a call


class LimitExceeded(Exception):
    """A call over a limit; ``retry_after`` says when to try again, ``kind`` which part of
    the limit refused it (:data:`KIND_CONCURRENCY` or :data:`KIND_RATE`). Raised in a K1
    task, it makes the task wait (re-enqueued, no attempt spent) like a limit on the task
    itself."""

    def __init__(self, name: str, key: str, retry_after: float,
                 kind: str = KIND_CONCURRENCY) -> None:
        # args rebuild it (result backend, pickle)
        super().__init__(name, key, retry_after, kind)
        self.name, self.key, self.retry_after, self.kind = name, key, retry_after, kind

    def __str__(self) -> str:
        where = f" for {self.key!r}" if self.key else ""
        return f"limit {self.name!r} reached{where}; retry in {self.retry_after:.2f}s"


def take_slot(limit: Limit, key: str) -> tuple[Slot | None, int]:
    """A concurrency slot of ``limit`` for ``key`` (None when all are taken), and the
    slots in use. Emits ``limit_state`` when the key becomes saturated."""
    assert limit.concurrency is not None
    slot = Slot(limit, key, uuid.uuid4().hex)
    taken, used, fresh = script(ACQUIRE)(
        keys=[slot.redis_key, SATURATED_KEY.format(limit.name, key),
              KEYS_INDEX.format(limit.name)],
        args=[limit.concurrency, int(limit.lease * 1000), slot.lease_id, key, KEY_MEMORY])
    if fresh:
        _announce(limit, key, "saturated", used)
    if not taken:
        return None, int(used)
    renewer().hold(slot)
    return slot, int(used)


def give_back(slot: Slot) -> None:
    """Release a slot (idempotent); emits ``limit_state`` when the key clears."""
    renewer().drop(slot)
    assert slot.limit.concurrency is not None
    used, cleared = script(RELEASE)(
        keys=[slot.redis_key, SATURATED_KEY.format(slot.limit.name, slot.key)],
        args=[slot.limit.concurrency, slot.lease_id])
    if cleared:
        _announce(slot.limit, slot.key, "cleared", used)


def reserve_start(limit: Limit, key: str, max_delay: float) -> tuple[bool, float]:
    """Reserve the next start under ``limit``'s rate if it is at most ``max_delay`` seconds
    away: ``(True, delay)``; else ``(False, delay)`` and nothing is reserved."""
    assert limit.interval is not None
    reserved, delay_ms = script(RATE)(
        keys=[RATE_KEY.format(limit.name, key), KEYS_INDEX.format(limit.name)],
        args=[limit.interval * 1000, max_delay * 1000, key, KEY_MEMORY])
    return bool(reserved), float(delay_ms) / 1000


def usage(limit: Limit) -> list[dict[str, object]]:
    """Live use of ``limit`` per recently seen key: slots in use, next free start."""
    client = get_redis()
    keys = client.zrevrange(KEYS_INDEX.format(limit.name), 0, 999)
    now_s, now_us = client.time()
    now_ms = now_s * 1000 + now_us / 1000
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.zcount(CONCURRENCY_KEY.format(limit.name, key), now_ms, "+inf")
        pipe.get(RATE_KEY.format(limit.name, key))
        pipe.exists(SATURATED_KEY.format(limit.name, key))
    replies = pipe.execute()
    rows = []
    for i, key in enumerate(keys):
        in_use, tat, saturated = replies[3 * i: 3 * i + 3]
        rows.append({"key": key, "running": int(in_use) if limit.concurrency else None,
                     "next_start_in": (max(0.0, round((float(tat) - now_ms) / 1000, 3))
                                       if limit.rate and tat else 0.0 if limit.rate else None),
                     "saturated": bool(saturated)})
    return rows


def forget(name: str) -> None:
    """Drop the bookkeeping of a deleted limit's keys (held leases simply expire)."""
    client = get_redis()
    keys = client.zrange(KEYS_INDEX.format(name), 0, -1)
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.delete(RATE_KEY.format(name, key), SATURATED_KEY.format(name, key))
    pipe.delete(KEYS_INDEX.format(name))
    pipe.execute()


def _announce(limit: Limit, key: str, state: str, used: int) -> None:
    from k1.events import OPERATORS, emit

    log.info("limit %s%s: %s (%s of %s running)", limit.name, f"[{key}]" if key else "",
             state, used, limit.concurrency)
    # A key is a tenant's data: a project's key goes to that project and the operators,
    # an argument value (any project's) only to the operators; a global limit's to all.
    where: dict[str, Any] = (
        {} if limit.per == PER_GLOBAL else
        {"project_id": key, "audience": OPERATORS} if limit.per == PER_PROJECT else
        {"audience": OPERATORS})
    emit("limit_state", type=state, name=limit.name, key=key, per=limit.per, state=state,
         running=int(used), concurrency=limit.concurrency, **where)


_scripts: dict[str, redis.commands.core.Script] = {}


def script(source: str) -> redis.commands.core.Script:
    # register_script caches the SHA and falls back to EVAL after a Redis restart.
    found = _scripts.get(source)
    if found is None:
        found = _scripts[source] = get_redis().register_script(source)
    return found


class Lease(Protocol):
    """Something held in Redis for ``lease`` seconds unless renewed (a concurrency slot,
    a unique task's claim)."""

    @property
    def lease_id(self) -> str: ...

    @property
    def lease(self) -> float: ...

    def renew(self) -> bool: ...


class _Renewer:
    """Renews the leases this process holds, every third of their lease, in a daemon
    thread (started on first use, so in each pool process after the fork)."""

    def __init__(self) -> None:
        self.held: dict[str, Lease] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None

    def hold(self, lease: Lease) -> None:
        with self.lock:
            self.held[lease.lease_id] = lease
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="k1-flow-leases",
                                               daemon=True)
                self.thread.start()
        self.wake.set()

    def drop(self, lease: Lease) -> None:
        with self.lock:
            self.held.pop(lease.lease_id, None)

    def _run(self) -> None:
        while True:
            with self.lock:
                leases = list(self.held.values())
            every = min((lease.lease for lease in leases), default=60.0) / 3
            self.wake.clear()
            self.wake.wait(every)
            for lease in leases:
                with self.lock:
                    if lease.lease_id not in self.held:
                        continue
                try:
                    if not lease.renew():
                        log.warning("%s had expired before its renewal", lease)
                except redis.RedisError as exc:
                    log.warning("%s: renewal failed (%s)", lease, exc)


_renewers: dict[int, _Renewer] = {}


def renewer() -> _Renewer:
    """This process's lease renewer."""
    import os

    # One per process: a pool process forked from a parent that held leases starts afresh.
    pid = os.getpid()
    found = _renewers.get(pid)
    if found is None:
        found = _renewers[pid] = _Renewer()
    return found


@contextlib.contextmanager
def holding(slots: list[Slot]) -> Iterator[None]:
    try:
        yield
    finally:
        for slot in slots:
            try:
                give_back(slot)
            except redis.RedisError as exc:  # the lease expires on its own
                log.warning("limit %s: slot not released (%s); it expires with its lease",
                            slot.limit.name, exc)
