"""Flow control across the fleet: concurrency and rate limits per key, unique tasks
(:mod:`k1.flow.unique`), and pausable queues.

On a task (checked when the task is defined)::

    @app.task(base=K1Task, bind=True,
              limits=[Limit("analysis", concurrency=2, per="project", rate="10/s")])
    def analyze(self, project_id: str, ...): ...

Over a limit, the task *waits*: it is re-enqueued with a countdown (Celery ``retry``)
without spending an attempt and without holding a worker slot while it waits. A
concurrency wait backs off from :data:`CONCURRENCY_WAIT_FIRST` to
:data:`CONCURRENCY_WAIT_MAX` seconds; a rate wait reserves the task's start time, so it
comes back exactly when its turn is due. After :data:`MAX_LIMIT_WAITS` waits the task
fails (and is dead-lettered) instead of waiting for ever.

Around an external call, the way breakers are::

    with limiter("analysis", rate="10/s"):          # defaults, replaced by a run-time limit
        requests.post(...)

Limits are changed at run time with ``PUT /api/limits/<name>`` (``k1 limits set``); every
process sees the change within :data:`~k1.flow.limits.REFRESH_INTERVAL` + a second.
While Redis is unreachable, limits are not enforced (the calls go through, logged), as
breakers let calls through: Redis is also the broker, so little runs anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import redis
from celery import signals

from k1.arguments import bound
from k1.connections import get_redis
from k1.flow import metrics, queues, unique
from k1.flow.gate import (
    KIND_RATE,
    LimitExceeded,
    Slot,
    give_back,
    holding,
    reserve_start,
    take_slot,
)
from k1.flow.limits import (
    PER_GLOBAL,
    InvalidLimit,
    Limit,
    Refreshed,
    code_limits,
    effective,
    read_runtime,
)
from k1.flow.unique import InvalidUnique, Superseded, Unique

__all__ = ["CONCURRENCY_WAIT_MAX", "InvalidLimit", "InvalidUnique", "Limit", "LimitExceeded",
           "Limiter", "RateWait", "Superseded", "Unique", "admitted", "declared_limits",
           "fleet_declared_limits", "limiter", "limits_in_force", "metrics", "queues",
           "unique", "wait_countdown"]

log = logging.getLogger(__name__)

CONCURRENCY_WAIT_FIRST = 0.5  # s: a slot often frees within a task's run time
CONCURRENCY_WAIT_MAX = 10.0  # s: 1,000 waiting tasks re-check at most ~100 times a second
WAIT_JITTER = 0.2  # up to +20 %, so waiting tasks do not come back in a herd
# Rate: a start is reserved at most this far ahead (the task's message is held by a worker
# until then, far below the broker's visibility timeout); later ones wait and come back.
MAX_RESERVATION = 30.0
RUN_NOW = 0.05  # s: a start reserved this close is taken at once (sleeping in place)
MAX_LIMIT_WAITS = 2_000  # ~5 h of waits at the longest interval, then the task fails

RUNTIME = Refreshed(read_runtime)
_code_cache: tuple[int, dict[str, Limit]] = (-1, {})


def limits_in_force() -> dict[str, Limit]:
    """Every limit: those declared on registered tasks, replaced by run-time ones."""
    return effective(declared_limits(), RUNTIME.current())


def declared_limits() -> dict[str, Limit]:
    """The limits declared on the tasks registered in this process."""
    global _code_cache
    from k1.celery import app

    count = len(app.tasks)
    if _code_cache[0] != count:  # a task module was imported since
        _code_cache = (count, code_limits(app.tasks.values()))
    return _code_cache[1]


DECLARED_KEY = "k1:flow:declared"  # hash: name -> JSON of a limit declared on workers' tasks
DECLARED_TTL = 2 * 3600  # s: a worker republishes hourly; a limit gone from code fades out
REPUBLISH_EVERY = 3600


def fleet_declared_limits() -> dict[str, Limit]:
    """Limits declared on tasks of this process or of any running worker (which may
    register tasks this process does not: the API lists them too)."""
    published = {}
    for name, raw in get_redis().hgetall(DECLARED_KEY).items():
        entry = json.loads(raw)
        if entry["at"] > time.time() - DECLARED_TTL:
            published[name] = Limit.from_dict(name, entry["limit"])
    return {**published, **declared_limits()}


@signals.worker_ready.connect
def _publish_declared(**_: Any) -> None:
    """Publish this worker's declared limits now and hourly (a daemon thread)."""
    def publish() -> None:
        while True:
            try:
                entries = {limit.name: json.dumps({"at": time.time(), "limit": {
                    k: v for k, v in limit.as_dict().items() if k != "name"}})
                    for limit in declared_limits().values()}
                if entries:
                    get_redis().hset(DECLARED_KEY, mapping=entries)
            except redis.RedisError as exc:
                log.warning("could not publish declared limits (%s)", exc)
            time.sleep(REPUBLISH_EVERY)

    threading.Thread(target=publish, name="k1-flow-declared", daemon=True).start()


class RateWait(LimitExceeded):
    """A task's start is reserved ``retry_after`` seconds from now under limit ``name``."""

    def __init__(self, name: str, key: str, retry_after: float, kind: str = KIND_RATE) -> None:
        super().__init__(name, key, retry_after, kind)


@contextlib.contextmanager
def admitted(task: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any],
             project_id: str | None, reserved: frozenset[str] = frozenset()) -> Iterator[None]:
    """Run the body inside the task's limits: its concurrency slots held, its start
    counted against its rates; :class:`LimitExceeded` when it must wait instead.
    ``reserved``: the rate limits whose start this call reserved already."""
    try:
        limits = [limit for limit in limits_in_force().values() if task.name in limit.tasks]
    except redis.RedisError as exc:
        log.warning("task %s: limits unreadable (%s); running unlimited", task.name, exc)
        limits = []
    if not limits:
        yield
        return
    arguments = _arguments(task, args, kwargs)
    slots: list[Slot] = []
    with holding(slots):
        try:
            _take(limits, arguments, project_id, reserved, slots)
        except redis.RedisError as exc:
            log.warning("task %s: limits unreachable (%s); running unlimited", task.name, exc)
        yield


def _take(limits: list[Limit], arguments: Mapping[str, Any], project_id: str | None,
          reserved: frozenset[str], slots: list[Slot]) -> None:
    for limit in limits:  # concurrency first: a slot can be given back, a start cannot
        if limit.concurrency is not None:
            key = limit.key_of(project_id, arguments)
            slot, _ = take_slot(limit, key)
            if slot is None:
                raise LimitExceeded(limit.name, key, 0.0)
            slots.append(slot)
    for limit in limits:
        if limit.rate is not None and limit.name not in reserved:
            key = limit.key_of(project_id, arguments)
            ok, delay = reserve_start(limit, key, MAX_RESERVATION)
            if not ok:
                raise LimitExceeded(limit.name, key, delay - MAX_RESERVATION, KIND_RATE)
            if delay > RUN_NOW:
                raise RateWait(limit.name, key, delay)
            time.sleep(delay)


def wait_countdown(exc: LimitExceeded, waits: int) -> float:
    """Seconds a task waits after its ``waits``-th wait for ``exc``'s limit."""
    if isinstance(exc, RateWait):
        return round(exc.retry_after, 3)  # its start is reserved: come back exactly then
    if exc.retry_after > 0:  # a rate too far ahead to reserve
        base = exc.retry_after
    else:
        base = min(CONCURRENCY_WAIT_MAX, CONCURRENCY_WAIT_FIRST * 2 ** min(waits, 10))
    return round(base * (1 + random.uniform(0, WAIT_JITTER)), 3)


def _arguments(task: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return bound(task.run, args, kwargs)
    except (TypeError, ValueError):  # the run itself will say what is wrong
        return dict(kwargs)


class Limiter:
    """A limit around code that is not a whole task (an external call). Use it as a
    context manager, or :meth:`acquire` / :meth:`release`. Over the limit,
    :class:`LimitExceeded` (inside a K1 task: the task waits) unless ``wait`` seconds
    suffice."""

    def __init__(self, name: str, key: str = "", *, wait: float = 0.0,
                 default: Limit | None = None) -> None:
        self.name, self.key, self.wait, self.default = name, key, wait, default
        self._slots: list[Slot] = []

    def limit(self) -> Limit | None:
        return limits_in_force().get(self.name) or self.default

    def acquire(self) -> Slot | None:
        """Take a concurrency slot and a start under the rate; the slot (if any) is given
        back by :meth:`release`."""
        try:
            limit = self.limit()
        except redis.RedisError as exc:
            log.warning("limiter %s: unreadable (%s); calling unlimited", self.name, exc)
            return None
        if limit is None:
            return None
        deadline = time.monotonic() + self.wait
        slot = None
        if limit.concurrency is not None:
            slot = self._slot(limit, deadline)
        if limit.rate is not None:
            try:
                ok, delay = reserve_start(limit, self.key,
                                          max(0.0, deadline - time.monotonic()))
            except BaseException:
                if slot is not None:
                    give_back(slot)
                raise
            if not ok:
                if slot is not None:
                    give_back(slot)
                raise LimitExceeded(self.name, self.key, delay, KIND_RATE)
            time.sleep(delay)
        if slot is not None:
            self._slots.append(slot)
        return slot

    def _slot(self, limit: Limit, deadline: float) -> Slot:
        pause = CONCURRENCY_WAIT_FIRST / 5
        while True:
            slot, _ = take_slot(limit, self.key)
            if slot is not None:
                return slot
            if time.monotonic() + pause > deadline:
                raise LimitExceeded(self.name, self.key, CONCURRENCY_WAIT_FIRST)
            time.sleep(pause)
            pause = min(pause * 2, CONCURRENCY_WAIT_FIRST)

    def release(self, slot: Slot | None = None) -> None:
        slot = slot or (self._slots.pop() if self._slots else None)
        if slot is not None:
            if slot in self._slots:
                self._slots.remove(slot)
            give_back(slot)

    def __enter__(self) -> Limiter:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def limiter(name: str, key: str = "", *, wait: float = 0.0, concurrency: int | None = None,
            rate: str | None = None, lease: float | None = None) -> Limiter:
    """The limiter ``name`` for ``key``; ``concurrency``/``rate`` are its defaults in code
    (a run-time limit of that name replaces them). Without either and without a run-time
    limit, calls pass unlimited."""
    default = None
    if concurrency is not None or rate is not None:
        options: dict[str, Any] = {"concurrency": concurrency, "rate": rate}
        if lease is not None:
            options["lease"] = lease
        default = Limit(name, per=PER_GLOBAL, **options)
    return Limiter(name, key, wait=wait, default=default)
