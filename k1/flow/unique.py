"""Unique tasks: a task declared unique by key is queued or running at most once.

    from k1.flow import Unique

    @app.task(base=K1Task, bind=True, public=True, unique=Unique(per=["account"]))
    def sync_account(self, project_id: str, account: str, full: bool = False): ...

A *claim* in Redis, ``k1:flow:u:<task>:<digest of the key>``, names the task id that holds
the key. :func:`claim` takes it atomically (one Lua script) when the task is sent, in
:func:`k1.tasks.submissions.dispatch`, the one send path of the API, the CLI, beat, the
Conductor bridge and DLQ replay: a second sending while the claim is held sends nothing
and answers with the holder's id. The claim is kept through retries, breaker deferrals and
waits for a limit (the task is still queued or running) and released when the task ends
for good: it succeeded, it died (dead letter), or it was revoked or expired.

The key is always scoped by project: one project's submission never joins (nor learns the
id of) another project's task. Within the project it is the whole call (``per=
"arguments"``, the default: positional and keyword forms and defaults are canonicalised,
so ``f(1)`` and ``f(x=1)`` are the same call), the project alone (``per="project"``), or
the values of named arguments (``per=["account"]``).

A claim is a lease: it expires ``ttl`` seconds after its task was last seen alive (sent,
started, renewed every third of ``ttl`` while it runs, re-published for a retry), so a
task lost with its worker (SIGKILL, lost host) never keeps its key claimed for ever. A run
whose claim expired while it was queued and has been taken by another sending since does
not run: it is marked revoked as a duplicate when it starts (:func:`hold`), so the work
still runs once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import signals

from k1 import headers
from k1.arguments import bound
from k1.connections import get_redis
from k1.flow.gate import renewer, script
from k1.flow.limits import ARGUMENT, InvalidLimit

log = logging.getLogger(__name__)

PER_ARGUMENTS, PER_PROJECT = "arguments", "project"
# An unacknowledged task comes back within Redis' visibility timeout (1 h by default):
# a queued task's claim should last as long. Shorter, a task queued behind a longer
# backlog loses its claim (a second sending is then queued too, and skipped at its start).
DEFAULT_TTL = 3600.0
MIN_TTL = 2.0  # renewed every third of it while the task runs: shorter is mostly renewals
MAX_TTL = 7 * 24 * 3600.0  # as long as Celery keeps results (result_expires)
MAX_KEY_SHOWN = 200  # characters of a key's text kept with its claim (for the API)
CLAIM_KEY = "k1:flow:u:{}:{}"

# KEYS: the claim. ARGV: task id, ttl ms, key text, per (JSON). Takes the claim if free,
# renews it if this task holds it; else counts a duplicate. Returns {taken 0|1, holder}.
TAKE = """
local holder = redis.call('HGET', KEYS[1], 'task_id')
if holder and holder ~= ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'duplicates', 1)
  return {0, holder}
end
if not holder then
  local t = redis.call('TIME')
  redis.call('HSET', KEYS[1], 'task_id', ARGV[1], 'key', ARGV[3], 'per', ARGV[4],
             'since', t[1], 'duplicates', 0)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, ARGV[1]}
"""
# KEYS: the claim. ARGV: task id, ttl ms. Extends it only if that task holds it: a renewal
# racing the release must not take the claim again.
RENEW = """
if redis.call('HGET', KEYS[1], 'task_id') == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: the claim. ARGV: task id. Deletes it only if that task holds it.
RELEASE = """
if redis.call('HGET', KEYS[1], 'task_id') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class InvalidUnique(InvalidLimit):
    """A ``unique`` option is wrong; ``field`` names it (a flow option, like a limit's)."""


@dataclass(frozen=True)
class Unique:
    """How a task is unique: per ``"arguments"`` (the whole call, the default), per
    ``"project"``, or per the values of the named arguments (``["account"]``; one name
    may be given as a string) -- always within the task's project. ``ttl``: seconds a
    claim outlives the last sign of life of its task (default 1 h, from 2 s to 7 days)."""

    per: str | Sequence[str] = PER_ARGUMENTS
    ttl: float = DEFAULT_TTL

    def __post_init__(self) -> None:
        per = self.per
        if isinstance(per, str) and per in (PER_ARGUMENTS, PER_PROJECT):
            pass
        elif isinstance(per, str) and ARGUMENT.match(per):
            object.__setattr__(self, "per", (per,))
        elif (isinstance(per, list | tuple) and per
              and all(isinstance(name, str) and ARGUMENT.match(name) for name in per)):
            if len(set(per)) != len(per):
                raise InvalidUnique("per", "an argument named twice")
            object.__setattr__(self, "per", tuple(per))
        else:
            raise InvalidUnique("per", '"arguments", "project", or a list of argument names')
        if (isinstance(self.ttl, bool) or not isinstance(self.ttl, int | float)
                or not MIN_TTL <= self.ttl <= MAX_TTL):
            raise InvalidUnique("ttl", f"seconds from {MIN_TTL:g} to {MAX_TTL:g}")

    @property
    def described(self) -> str | list[str]:
        """``per`` as the API shows it."""
        return self.per if isinstance(self.per, str) else list(self.per)


def check_declared(unique: object, task_name: str, run: Any) -> Unique | None:
    """The ``unique=`` option of a task (``True`` for the defaults), checked when the
    task is defined: the named arguments must be parameters of ``run``."""
    if unique is None or unique is False:
        return None
    if unique is True:
        return Unique()
    if not isinstance(unique, Unique):
        raise TypeError(f"task {task_name}: unique must be True or k1.flow.Unique(...), "
                        f"not {unique!r}")
    if isinstance(unique.per, tuple) and run is not None:
        parameters = inspect.signature(run).parameters
        open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        missing = [name for name in unique.per if name not in parameters]
        if missing and not open_ended:
            known = ", ".join(name for name in parameters if name != "self")
            raise TypeError(f"task {task_name}: unique per {missing[0]!r}, which is not one "
                            f"of its arguments ({known})")
    return unique


@dataclass(frozen=True)
class Claim:
    """The claim of a unique task's key: ``holder`` is the task id holding it."""

    task_name: str
    redis_key: str
    key: str
    per: str | list[str]
    ttl: float
    holder: str
    lease_id: str  # the task id this process acts for (holding or asking)

    @property
    def lease(self) -> float:
        return self.ttl

    @property
    def held(self) -> bool:
        """Whether ``lease_id`` holds the claim."""
        return self.holder == self.lease_id

    def renew(self) -> bool:
        """Keep the claim ``ttl`` seconds more; False if this task does not hold it."""
        return bool(script(RENEW)(keys=[self.redis_key],
                                  args=[self.lease_id, int(self.ttl * 1000)]))

    def keep(self, extra: float) -> bool:
        """Keep the claim ``ttl`` + ``extra`` seconds more, taking it again if it lapsed;
        False if another task holds it now."""
        taken, _ = script(TAKE)(keys=[self.redis_key], args=[
            self.lease_id, int((self.ttl + extra) * 1000), self.key, json.dumps(self.per)])
        return bool(taken)

    def release(self) -> None:
        """Free the key if this task holds it (idempotent)."""
        renewer().drop(self)
        script(RELEASE)(keys=[self.redis_key], args=[self.lease_id])

    def describe(self) -> dict[str, Any]:
        """What the API shows of this claim (:func:`describe`)."""
        return describe(self.redis_key, self.holder)

    def __str__(self) -> str:
        return f"unique task {self.task_name} claim {self.key!r}"


def describe(redis_key: str, task_id: str) -> dict[str, Any]:
    """A claim as the API shows it to ``task_id``'s reader: its key, its holder (now),
    since when (epoch s), how many duplicates it turned away, and when it expires if its
    task is not seen again. ``held`` is False once the task ended (released)."""
    client = get_redis()
    with client.pipeline(transaction=False) as pipe:
        stored, ttl_ms = pipe.hgetall(redis_key).pttl(redis_key).execute()
    if not stored:
        return {"held": False}
    return {"held": stored.get("task_id") == task_id, "holder": stored.get("task_id"),
            "per": json.loads(stored.get("per") or "null"), "key": stored.get("key"),
            "since": int(stored["since"]) if stored.get("since") else None,
            "duplicates": int(stored.get("duplicates") or 0),
            "expires_in": round(ttl_ms / 1000, 1) if ttl_ms and ttl_ms > 0 else None}


def declared(task: Any) -> Unique | None:
    """The task's :class:`Unique`, or None."""
    unique = getattr(task, "unique", None)
    return unique if isinstance(unique, Unique) else None


def key_of(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
           project_id: str | None) -> tuple[str, str]:
    """The claim's Redis key and the key's text for a call of ``task``."""
    unique = declared(task)
    assert unique is not None
    selected: dict[str, Any] = {}
    if unique.per != PER_PROJECT:
        arguments = _arguments(task, args, kwargs or {})
        arguments.pop("project_id", None)  # the key is scoped by project anyway
        selected = (arguments if unique.per == PER_ARGUMENTS
                    else {name: arguments.get(name) for name in unique.per})
    canonical = json.dumps(selected, sort_keys=True, separators=(",", ":"), default=str)
    text = f"{project_id or ''}:{canonical}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]  # 128 bits: no collisions
    return CLAIM_KEY.format(task.name, digest), text[:MAX_KEY_SHOWN]


def _arguments(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    try:  # with defaults: f(1) and f(1, flag=False) are the same call
        return bound(task.run, args, kwargs, defaults=True)
    except (TypeError, ValueError):  # the run will say what is wrong; the call as given
        return {"args": list(args), "kwargs": dict(kwargs)}


def claim(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None,
          project_id: str | None, task_id: str, delay: float = 0.0) -> Claim:
    """Claim ``task``'s key for ``task_id`` (for ``delay`` seconds of countdown more than
    its ``ttl``), or learn who holds it: see :attr:`Claim.held`."""
    unique = declared(task)
    assert unique is not None
    redis_key, text = key_of(task, args, kwargs, project_id)
    taken, holder = script(TAKE)(keys=[redis_key], args=[
        task_id, int((unique.ttl + max(0.0, delay)) * 1000), text, json.dumps(unique.described)])
    return Claim(task.name, redis_key, text, unique.described, unique.ttl,
                 holder if not taken else task_id, task_id)


class Superseded(Exception):
    """This run's key is claimed by another task: it is a duplicate and does not run."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder

    def __str__(self) -> str:
        return f"duplicate of task {self.holder}, which holds its unique key"


def hold(task: Any, args: Sequence[Any], kwargs: Mapping[str, Any],
         project_id: str | None) -> Claim | None:
    """At the start of a run: confirm (or take again) the task's claim and renew it while
    the run lasts; :class:`Superseded` when another task holds the key. None for a task
    that is not unique, or when Redis cannot say (the run goes ahead, logged)."""
    if declared(task) is None:
        return None
    try:
        held = claim(task, args, kwargs, project_id, task.request.id)
    except redis.RedisError as exc:
        log.warning("task %s[%s]: unique claim unreadable (%s); running", task.name,
                    task.request.id, exc)
        return None
    if not held.held:
        raise Superseded(held.holder)
    renewer().hold(held)
    return held


def let_go(held: Claim | None, *, keep_for: float | None = None) -> None:
    """The run is over: stop renewing ``held``; keep it ``keep_for`` seconds more
    (the task comes back: a retry's countdown) or, when None, release it."""
    if held is None:
        return
    renewer().drop(held)
    try:
        if keep_for is None:
            held.release()
        else:
            held.keep(keep_for)
    except redis.RedisError as exc:  # the claim expires with its ttl
        log.warning("%s: not updated after the run (%s); it expires in %gs", held, exc,
                    held.ttl)


def release_for(task: Any, task_id: str, args: Sequence[Any] | None,
                kwargs: Mapping[str, Any] | None, project_id: str | None) -> None:
    """Release the claim ``task_id`` holds for this call of ``task``, if any (the task
    died, or was revoked before it ran)."""
    if declared(task) is None:
        return
    redis_key, _ = key_of(task, args or (), kwargs, project_id)
    try:
        script(RELEASE)(keys=[redis_key], args=[task_id])
    except redis.RedisError as exc:
        log.warning("task %s[%s]: unique claim not released (%s); it expires with its "
                    "ttl", task.name, task_id, exc)


@signals.task_revoked.connect
def _release_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A revoked, terminated or expired task will not run (again): its key is free.
    Celery sends the task as ``sender`` and the request's context (``id``, ``args``,
    ``kwargs``, the message headers) as ``request``."""
    if request is None or declared(sender) is None:
        return
    kwargs = request.kwargs if isinstance(request.kwargs, dict) else {}
    release_for(sender, request.id, request.args, kwargs,
                headers.project_from(kwargs, request))
