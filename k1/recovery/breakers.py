"""Circuit breakers around external calls, with their state shared through Redis.

One pybreaker breaker per external dependency; its state lives in Redis (pybreaker's
``CircuitRedisStorage``), so a breaker opened by failures in one worker process is open
in every process and host::

    from k1.recovery.breakers import breaker
    profile = breaker("analysis").call(requests.post, url, json=body, timeout=10)

A refused call raises :class:`BreakerOpen` (a ``CircuitBreakerError``) that says when the
breaker may half-open; :class:`~k1.tasks.base.K1Task` then defers the task until that
moment instead of spending its retry budget.

Each transition is published once (``breaker_state`` event) however many processes
notice it, and counted for the trip-rate metric.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import pybreaker
import redis
import requests

from k1.events import emit, metrics
from k1.recovery.errors import is_transient_status, status_of
from k1.settings import get_settings

log = logging.getLogger(__name__)

# Defaults (K1_BREAKER_FAIL_MAX, K1_BREAKER_RESET_TIMEOUT): 5 consecutive failures open a
# breaker; after 60 s open, one trial call is let through (half-open).
REGISTRY_KEY = "k1:breakers"  # hash: name -> "fail_max:reset_timeout", for the API
TRANSITION_KEY = "k1:breaker:{}:last_state"  # last published state: one event per change

P = ParamSpec("P")
R = TypeVar("R")


class BreakerOpen(pybreaker.CircuitBreakerError):
    """A call refused by an open breaker; ``retry_after`` says when to try again."""

    def __init__(self, name: str, retry_after: float = 0.0) -> None:
        super().__init__(name, retry_after)  # args rebuild it (result backend, pickle)
        self.name, self.retry_after = name, retry_after

    def __str__(self) -> str:
        return f"circuit breaker {self.name!r} is open; retry in {self.retry_after:.1f}s"


def _is_client_error(exc: BaseException) -> bool:
    """A non-transient HTTP answer says our request was wrong, not that the dependency is
    down: it does not count against the breaker."""
    return isinstance(exc, requests.HTTPError) and not is_transient_status(status_of(exc))


class K1Breaker(pybreaker.CircuitBreaker):
    """A pybreaker breaker whose refusals carry the time until half-open.

    It keeps its :attr:`storage` (pybreaker offers no public accessor), so that the time
    the breaker opened is read through the storage's public ``opened_at``.
    """

    def __init__(self, *, state_storage: pybreaker.CircuitBreakerStorage, **options: Any) -> None:
        super().__init__(state_storage=state_storage, **options)
        self.storage = state_storage

    def call(self, func, *args, **kwargs):
        # pybreaker holds its lock for the whole call (danielfm/pybreaker#55), so every
        # guarded call of a process waited for the one in flight: the conductor process's
        # report threads, the web process's green threads. The state is read under the
        # lock and the call runs outside it, as calls from other processes sharing the
        # Redis state always have (the counters are Redis increments).
        with self._lock:
            state = self.state
        try:
            return state.call(func, *args, **kwargs)
        except BreakerOpen:
            raise
        except pybreaker.CircuitBreakerError:
            raise BreakerOpen(str(self.name), self.seconds_until_half_open()) from None

    def seconds_until_half_open(self) -> float:
        opened_at = self.storage.opened_at
        if opened_at is None:
            return float(self.reset_timeout)
        remaining = (opened_at.timestamp() + self.reset_timeout) - time.time()
        return max(1.0, remaining)


class _Announcer(pybreaker.CircuitBreakerListener):
    """Counts calls and trips; publishes each state change once across all processes."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def before_call(self, cb: pybreaker.CircuitBreaker, func: Any, *args: Any,
                    **kwargs: Any) -> None:
        with contextlib.suppress(redis.RedisError):  # a metric is not worth failing a call
            self.client.incr(metrics.BREAKER_CALLS)

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        state = new_state.name
        try:
            previous = self.client.getset(TRANSITION_KEY.format(cb.name), state)
        except redis.RedisError:
            return
        previous = previous.decode() if isinstance(previous, bytes) else previous
        if previous == state or (previous is None and state == pybreaker.STATE_CLOSED):
            return  # another process announced it already (or nothing happened)
        if state == pybreaker.STATE_OPEN:
            with contextlib.suppress(redis.RedisError):
                self.client.incr(metrics.BREAKER_TRIPS)
        log.warning("circuit breaker %s: %s -> %s", cb.name, previous or "closed", state)
        emit("breaker_state", type=state, name=cb.name, state=state,
             previous=previous or pybreaker.STATE_CLOSED,
             **(_timing(cb) if isinstance(cb, K1Breaker) else {}))


@dataclass(frozen=True)
class BreakerStatus:
    name: str
    state: str
    fail_counter: int
    fail_max: int
    reset_timeout: int
    opened_at: str | None
    next_half_open_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _storage_client() -> redis.Redis:
    # pybreaker's storage reads bytes: this client must not decode responses.
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=5,
                                socket_connect_timeout=5, health_check_interval=30)


def breaker(name: str, *, fail_max: int | None = None,
            reset_timeout: int | None = None) -> K1Breaker | _Unguarded:
    """The process's breaker for dependency ``name`` (created on first use).

    While Redis, where the state lives, cannot be reached, calls go through unguarded,
    as pybreaker's storage itself does when Redis fails later (fallback: closed); the
    breaker is created on the first call after Redis is back.
    """
    settings = get_settings()
    try:
        return _breaker(name, fail_max or settings.breaker_fail_max,
                        reset_timeout or settings.breaker_reset_timeout)
    except redis.RedisError as exc:
        log.warning("breaker %s: state unreachable (%s); calling unguarded", name, exc)
        return _UNGUARDED


class _Unguarded:
    """What :func:`breaker` returns while Redis is unreachable: calls pass straight on."""

    @staticmethod
    def call(func, *args, **kwargs):
        return func(*args, **kwargs)


_UNGUARDED = _Unguarded()


@functools.cache
def _breaker(name: str, fail_max: int, reset_timeout: int) -> K1Breaker:
    client = _storage_client()
    try:
        client.hset(REGISTRY_KEY, name, f"{fail_max}:{reset_timeout}")
    except redis.RedisError:
        log.warning("breaker %s: could not register in Redis", name)
    storage = pybreaker.CircuitRedisStorage(
        pybreaker.STATE_CLOSED, client, namespace=name,
        # Redis down: let calls through rather than refuse all work; the calls
        # themselves then fail or succeed on their own.
        fallback_circuit_state=pybreaker.STATE_CLOSED,
    )
    return K1Breaker(
        fail_max=fail_max, reset_timeout=reset_timeout, name=name, state_storage=storage,
        exclude=[_is_client_error], listeners=[_Announcer(client)],
    )


def known_breakers() -> dict[str, tuple[int, int]]:
    """Every breaker any process has created: name -> (fail_max, reset_timeout)."""
    registry = _storage_client().hgetall(REGISTRY_KEY)
    known = {}
    for raw_name, raw in registry.items():
        fail_max, reset_timeout = (int(x) for x in raw.decode().split(":"))
        known[raw_name.decode()] = (fail_max, reset_timeout)
    return known


def status(name: str) -> BreakerStatus | None:
    options = known_breakers().get(name)
    return None if options is None else _status_of(name, options)


def all_statuses() -> list[BreakerStatus]:
    known = known_breakers()
    return [_status_of(name, known[name]) for name in sorted(known)]


def states_snapshot() -> dict[str, str]:
    """name -> state of every known breaker (stored with each dead letter)."""
    try:
        return {name: _breaker(name, *options).current_state
                for name, options in known_breakers().items()}
    except redis.RedisError:
        return {}


def reset(name: str) -> BreakerStatus | None:
    """Close breaker ``name`` and clear its failure count; None if unknown."""
    options = known_breakers().get(name)
    if options is None:
        return None
    _breaker(name, *options).close()
    return _status_of(name, options)


def _status_of(name: str, options: tuple[int, int]) -> BreakerStatus:
    cb = _breaker(name, *options)
    state = cb.current_state
    timing = _timing(cb) if state != pybreaker.STATE_CLOSED else {
        "opened_at": None, "next_half_open_at": None}
    return BreakerStatus(name=name, state=state, fail_counter=cb.fail_counter,
                         fail_max=cb.fail_max, reset_timeout=int(cb.reset_timeout), **timing)


def _timing(cb: K1Breaker) -> dict[str, str | None]:
    opened_at: datetime | None = cb.storage.opened_at
    if opened_at is None:
        return {"opened_at": None, "next_half_open_at": None}
    half_open = datetime.fromtimestamp(opened_at.timestamp() + cb.reset_timeout, UTC)
    return {"opened_at": opened_at.isoformat(), "next_half_open_at": half_open.isoformat()}
