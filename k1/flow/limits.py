"""What a limit is, and where limits come from: code (``@app.task(limits=[...])``) and
run time (``PUT /api/limits/<name>``, kept in Redis and read by every process).

A limit named in code and at run time is one limit: the run-time definition replaces the
code's until it is deleted. Several tasks declaring a limit of the same name share it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from k1.connections import get_redis

PER_GLOBAL, PER_PROJECT = "global", "project"
RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_LEASE = 60.0  # seconds a slot outlives a worker that stopped renewing it (SIGKILL)
MIN_LEASE = 2.0  # the lease is renewed every third of it: shorter would mostly be renewals
MAX_CONCURRENCY = 100_000
MAX_RATE = 100_000  # per unit: beyond that a Redis round trip per call costs more than it saves
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
ARGUMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
RATE = re.compile(r"^\s*(\d+)\s*/\s*([smh])\s*$")
T = TypeVar("T")
RUNTIME_KEY = "k1:flow:limits"  # hash: name -> JSON of a run-time limit
# Every process re-reads the run-time limits this often: a change takes effect within 2 s.
REFRESH_INTERVAL = 1.0


class InvalidLimit(ValueError):
    """A limit option is wrong; ``field`` names it (the API's 400 says which)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Limit:
    """At most ``concurrency`` runs at once and/or ``rate`` starts ("10/s", "100/m",
    "5/h") across every worker, counted separately for each key: one for the whole fleet
    (``per="global"``), one per project (``"project"``), or one per value of the task's
    argument of that name (``per="account"``).

    ``lease``: seconds a concurrency slot survives its holder dying; it is renewed while
    the task runs. ``tasks``: the tasks it applies to (filled in for a limit declared on a
    task; required for a run-time limit).
    """

    name: str
    concurrency: int | None = None
    rate: str | None = None
    per: str = PER_GLOBAL
    lease: float = DEFAULT_LEASE
    tasks: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise InvalidLimit("name", "1 to 100 of A-Z a-z 0-9 _ . : -")
        if self.concurrency is not None and (
                isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int)
                or not 1 <= self.concurrency <= MAX_CONCURRENCY):
            raise InvalidLimit("concurrency", f"an integer from 1 to {MAX_CONCURRENCY}, or null")
        if self.rate is not None:
            parse_rate(self.rate)
        if self.concurrency is None and self.rate is None:
            raise InvalidLimit("concurrency", "give a concurrency, a rate or both")
        if not isinstance(self.per, str) or not (self.per in (PER_GLOBAL, PER_PROJECT)
                                                 or ARGUMENT.match(self.per)):
            raise InvalidLimit("per", '"global", "project" or an argument name')
        if (isinstance(self.lease, bool) or not isinstance(self.lease, int | float)
                or not MIN_LEASE <= self.lease <= 24 * 3600):
            raise InvalidLimit("lease", f"seconds from {MIN_LEASE:g} to 86400")
        tasks = self.tasks
        if isinstance(tasks, str) or not all(isinstance(t, str) and t for t in tasks):
            raise InvalidLimit("tasks", "a list of task names")
        object.__setattr__(self, "tasks", tuple(dict.fromkeys(tasks)))

    @property
    def interval(self) -> float | None:
        """Seconds between two starts under the rate, or None without a rate."""
        if self.rate is None:
            return None
        count, unit = parse_rate(self.rate)
        return RATE_UNITS[unit] / count

    def for_task(self, task_name: str) -> Limit:
        return self if task_name in self.tasks else Limit(
            **{**asdict(self), "tasks": (*self.tasks, task_name)})

    def key_of(self, project_id: str | None, arguments: Mapping[str, Any]) -> str:
        """The key a call counts under ("" for a global limit)."""
        if self.per == PER_GLOBAL:
            return ""
        if self.per == PER_PROJECT:
            return project_id or ""
        value = arguments.get(self.per)
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True,
                                                                default=str)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> Limit:
        """A limit from an API body or its stored JSON (unknown fields are refused)."""
        known = {"tasks", "per", "concurrency", "rate", "lease"}
        unknown = sorted(set(data) - known - {"name"})
        if unknown:
            raise InvalidLimit(unknown[0], "unknown field")
        tasks = data.get("tasks")
        if not isinstance(tasks, list):  # empty: a limit for limiter() calls only
            raise InvalidLimit("tasks", "a list of task names")
        return cls(name=name, tasks=tuple(tasks), per=data.get("per", PER_GLOBAL),
                   concurrency=data.get("concurrency"), rate=data.get("rate"),
                   lease=data.get("lease", DEFAULT_LEASE))


def parse_rate(text: object) -> tuple[int, str]:
    """``"10/s"`` -> ``(10, "s")``; :class:`InvalidLimit` naming ``rate`` otherwise."""
    match = RATE.match(text) if isinstance(text, str) else None
    if not match or not 1 <= int(match.group(1)) <= MAX_RATE:
        raise InvalidLimit("rate", f'"N/s", "N/m" or "N/h" with N from 1 to {MAX_RATE}')
    return int(match.group(1)), match.group(2)


def check_declared(limits: object, task_name: str) -> tuple[Limit, ...]:
    """The ``limits=`` option of a task, checked when the task is defined."""
    if not isinstance(limits, list | tuple) or not all(isinstance(x, Limit) for x in limits):
        raise TypeError(f"task {task_name}: limits must be a list of k1.flow.Limit")
    names = [limit.name for limit in limits]
    if len(set(names)) != len(names):
        raise TypeError(f"task {task_name}: two limits named the same")
    return tuple(limit.for_task(task_name) for limit in limits)


def code_limits(tasks: Iterable[Any]) -> dict[str, Limit]:
    """Limits declared on ``tasks`` (Celery task objects), merged by name."""
    merged: dict[str, Limit] = {}
    for task in tasks:
        for limit in getattr(task, "limits", ()) or ():
            known = merged.get(limit.name)
            merged[limit.name] = limit if known is None else known.for_task(task.name)
    return merged


class Refreshed(Generic[T]):
    """A value read from Redis at most every :data:`REFRESH_INTERVAL` seconds per process
    (run-time limits, paused queues): changes reach every worker within 2 s, and a task
    costs no Redis round trip for them in between."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._value: T | None = None

    def current(self) -> T:
        with self._lock:
            now = time.monotonic()
            if self._value is None or now - self._read_at >= REFRESH_INTERVAL:
                self._value = self._read()
                # Aged from before the read: a change written while it ran is read at the
                # first call REFRESH_INTERVAL after the change, never later.
                self._read_at = now
            return self._value

    def forget(self) -> None:
        with self._lock:
            self._read_at = float("-inf")


def read_runtime() -> dict[str, Limit]:
    stored = get_redis().hgetall(RUNTIME_KEY)
    return {name: Limit.from_dict(name, json.loads(raw)) for name, raw in stored.items()}


def save_runtime(limit: Limit) -> None:
    body = {k: v for k, v in limit.as_dict().items() if k != "name"}
    get_redis().hset(RUNTIME_KEY, limit.name, json.dumps(body))


def delete_runtime(name: str) -> bool:
    return bool(get_redis().hdel(RUNTIME_KEY, name))


def effective(code: Mapping[str, Limit], runtime: Mapping[str, Limit]) -> dict[str, Limit]:
    """Every limit in force: the code's, replaced by run-time ones of the same name."""
    return {**code, **runtime}
