"""``K1Task``: the base of every K1 task. It owns what happens when a task fails.

A failure is classified (:mod:`k1.recovery.errors`):

- transient: re-enqueued with the policy's backoff (Celery ``retry``), until the
  attempts run out;
- an open breaker: deferred until the breaker may half-open, without spending an
  attempt (bounded by ``max_deferrals``);
- over a limit of :mod:`k1.flow` (``limits=[...]``, or a ``limiter`` in its body): waits,
  re-enqueued without spending an attempt (counted apart, bounded by ``MAX_LIMIT_WAITS``);
- non-transient, or out of attempts: the task fails for good and its dead letter is
  written (:class:`~k1.recovery.dlq.store.DeadLetterStore`).

A task declared ``unique`` (:mod:`k1.flow.unique`) keeps its key claimed through all of
the above but the last, which releases it, as success does; a run whose key another task
holds is not run (revoked as a duplicate).

Every K1 task takes ``project_id`` so that its events reach the right room and its dead
letters the right project, and performs its side effects through ``self.effects`` so that
they happen once however often the task runs (:mod:`k1.tasks.effects`)::

    @app.task(base=K1Task, bind=True, public=True, retry_policy=RetryPolicy(attempts=5),
              argument_limits={"batch": (1, 500)}, soft_time_limit=60)
    def sync_account(self, project_id: str, account: str, batch: int = 100) -> dict: ...

Each run is bounded by Celery's time limits (defaults in ``celeryconfig.py``, a task's own
``soft_time_limit``/``time_limit`` options win); a run past its soft limit dies with a dead
letter rather than being retried (:mod:`k1.recovery.errors` says why).
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, NoReturn

from celery import Task
from celery.exceptions import Ignore, Reject, Retry

from k1 import flow, headers
from k1.arguments import bound
from k1.recovery.errors import ErrorTable, Kind, classify
from k1.recovery.policy import DEFAULT_MAX_DEFER_WAIT, DEFAULT_POLICY, RetryPolicy
from k1.tasks.effects import Effects

log = logging.getLogger(__name__)

DEFER_JITTER = 0.10  # up to +10 % on a deferral, so deferred tasks do not return in a herd
MAX_MESSAGE = 10_000  # characters of an exception message kept in a dead letter
# Publishing a retry rides out a broker restart (~40 s in all) before giving up: Celery's
# default (3 tries within a second) rejects the message for good when the broker is away,
# and with acks_late that loses the task (seen in tests/fault/test_redis.py).
RETRY_PUBLISH_POLICY = {"max_retries": 20, "interval_start": 0.5, "interval_step": 0.5,
                        "interval_max": 2.0}


class K1Task(Task):
    """Celery task with K1's retry policy, breaker deferral and dead-letter queue.

    :cvar public: clients may start it (``POST /api/tasks``, schedules); default False, so
        a task is internal until it says otherwise.
    :cvar operator_only: it acts platform-wide: only an operator's token may start it.
    :cvar retry_policy: the :class:`RetryPolicy` for this task.
    :cvar error_classes: rows consulted before the default classification table.
    :cvar argument_limits: ``{argument: (low, high)}`` integer bounds, checked when the
        task is submitted (a 400) and again when it runs (a dead letter); None passes, as
        an argument not given.
    :cvar limits: :class:`k1.flow.Limit` s on this task's runs, checked when it is defined.
    :cvar unique: a :class:`k1.flow.Unique` (or True): queued or running at most once per
        key (:mod:`k1.flow.unique`), checked when it is defined.
    """

    public: ClassVar[bool] = False
    operator_only: ClassVar[bool] = False
    argument_limits: ClassVar[Mapping[str, tuple[int, int]]] = {}
    retry_policy: RetryPolicy = DEFAULT_POLICY
    error_classes: ErrorTable = ()
    limits: tuple[flow.Limit, ...] = ()
    unique: flow.Unique | None = None
    # The policy bounds attempts and deferrals; Celery's own cap (3) would cut them short.
    max_retries = None
    # Records in task history when a run's message goes back to the queue (no signal does).
    Request = "k1.history.worker:HandBackRequest"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.name or cls.__name__
        if "limits" in cls.__dict__:  # @app.task(limits=[...]) makes a subclass
            cls.limits = flow.limits.check_declared(cls.limits, name)
        if "unique" in cls.__dict__:
            cls.unique = flow.unique.check_declared(cls.unique, name, getattr(cls, "run", None))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flow.queues.check_not_paused(self.request)
        project = headers.project_of(self, kwargs)
        try:
            claim = flow.unique.hold(self, args, kwargs, project)
        except flow.Superseded as exc:
            self._skip_duplicate(exc)
        try:
            result = self._run_admitted(args, kwargs, project)
        except Retry as retry:  # still queued: the claim lasts until it is due, and more
            flow.unique.let_go(claim, keep_for=_seconds_until(retry.when))
            raise
        except BaseException:  # dead (on_failure releases the claim) or handed back
            flow.unique.let_go(claim, keep_for=0.0)
            raise
        flow.unique.let_go(claim)
        return result

    def _run_admitted(self, args: tuple[Any, ...], kwargs: dict[str, Any],
                      project: str | None) -> Any:
        try:
            if self.argument_limits:  # a message sent around submit() is held to them too
                self.check_arguments(bound(self.run, args, kwargs))
            reserved = frozenset(self.request.get(headers.LIMIT_RESERVED) or ())
            with flow.admitted(self, args, kwargs, project, reserved):
                return self.run(*args, **kwargs)
        except Retry:
            raise
        except flow.LimitExceeded as exc:
            self._wait_for_limit(exc)
            raise
        except Exception as exc:
            self._retry_if_transient(exc)
            raise

    def _skip_duplicate(self, exc: flow.Superseded) -> NoReturn:
        """This run's key is held by another task (its claim expired while it was queued
        and another sending took it): it does not run, and says so as revoked."""
        from k1.events.signals import on_superseded

        log.warning("task %s[%s] not run: %s", self.name, self.request.id, exc)
        self.backend.mark_as_revoked(self.request.id, reason=str(exc), request=self.request)
        on_superseded(self, str(exc))
        raise Ignore(str(exc)) from exc

    def check_arguments(self, arguments: Mapping[str, Any]) -> None:
        """Raise ValueError naming the first argument outside :attr:`argument_limits`."""
        for name, (low, high) in self.argument_limits.items():
            value = arguments.get(name)
            if value is None:  # not given (a workflow passes None for an absent input)
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name}: must be an integer from {low} to {high}, "
                                 f"got {value!r}")

    @property
    def effects(self) -> Effects:
        """This run's effects, keyed by :meth:`idempotency_key` (:mod:`k1.tasks.effects`)."""
        return Effects(self.idempotency_key())

    def policy(self) -> RetryPolicy:
        """The policy for the current call: the task's, with the call's header overrides."""
        return self.retry_policy.merged(self.request.get(headers.RETRY_POLICY))

    def deferrals(self) -> int:
        return int(self.request.get(headers.DEFERRALS) or 0)

    def limit_waits(self) -> int:
        return int(self.request.get(headers.LIMIT_WAITS) or 0)

    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ... (deferrals and waits for a
        limit do not count)."""
        return self.request.retries - self.deferrals() - self.limit_waits() + 1

    def idempotency_key(self) -> str:
        """Stable across retries and replays: side effects should be keyed by it."""
        return str(self.request.get(headers.IDEMPOTENCY_KEY) or self.request.id)

    def _wait_for_limit(self, exc: flow.LimitExceeded) -> None:
        """Re-enqueue the task until the limit lets it run (no attempt spent); past
        ``MAX_LIMIT_WAITS``, return and let it fail."""
        waits = self.limit_waits()
        if waits >= flow.MAX_LIMIT_WAITS:
            return
        countdown = flow.wait_countdown(exc, waits)
        carried = {**(self.request.headers or {}), headers.LIMIT_WAITS: waits + 1}
        if isinstance(exc, flow.RateWait):
            carried[headers.LIMIT_RESERVED] = sorted(
                {*(self.request.get(headers.LIMIT_RESERVED) or ()), exc.name})
        log.info("task %s[%s] waits %.2fs: %s", self.name, self.request.id, countdown, exc)
        flow.metrics.record_wait(exc, countdown)
        self._publish_retry(exc, countdown, carried)

    def _retry_if_transient(self, exc: Exception) -> None:
        verdict = classify(exc, self.error_classes)
        policy = self.policy()
        if verdict.kind is Kind.DEAD:
            return
        if verdict.kind is Kind.DEFER:
            if self.deferrals() >= policy.max_deferrals:
                return
            wait = min(verdict.retry_after or policy.initial, DEFAULT_MAX_DEFER_WAIT)
            countdown = round(wait * (1 + random.uniform(0, DEFER_JITTER)), 3)
            extra = {headers.DEFERRALS: self.deferrals() + 1}
            log.info("task %s[%s] deferred %.2fs: %s", self.name, self.request.id, countdown, exc)
        else:
            if not policy.should_retry(self.attempt() - 1):
                return
            countdown = policy.countdown(self.attempt() - 1, verdict.retry_after)
            extra = {}
            log.warning("task %s[%s] attempt %d failed (%s: %s); retrying in %.2fs",
                        self.name, self.request.id, self.attempt(), type(exc).__name__, exc,
                        countdown)
        first_failure = self.request.get(headers.FIRST_FAILURE) or datetime.now(UTC).isoformat()
        carried = {**(self.request.headers or {}), headers.FIRST_FAILURE: first_failure, **extra}
        self._publish_retry(exc, countdown, carried)

    def _publish_retry(self, exc: Exception, countdown: float, carried: dict[str, Any]) -> None:
        try:
            raise self.retry(exc=exc, countdown=countdown, headers=carried,
                             retry_policy=RETRY_PUBLISH_POLICY)
        except Reject as rejected:
            # The retry could not be published: give the message back rather than drop it
            # (Celery's requeue=False). If the broker is still away, the message stays
            # unacknowledged and returns after the visibility timeout.
            log.error("task %s[%s]: its retry could not be published (%s); handing the "
                      "message back", self.name, self.request.id, rejected.reason)
            raise Reject(rejected.reason, requeue=True) from exc

    def on_failure(self, exc: Exception, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: Any) -> None:
        """The task failed for good: write its dead letter and announce the death."""
        from k1.events import make_event
        from k1.history import capture as history
        from k1.recovery.breakers import states_snapshot
        from k1.recovery.dlq.store import DeadLetterStore

        now = datetime.now(UTC)
        first = self.request.get(headers.FIRST_FAILURE)
        fields = {
            "task_id": task_id,
            "task_name": self.name,
            "queue": (self.request.delivery_info or {}).get("routing_key"),
            "args": list(args or ()),
            "kwargs": dict(kwargs or {}),
            "project_id": headers.project_of(self, kwargs),
            "user_id": self.request.get(headers.USER),
            "exception_type": type(exc).__name__,
            "exception_message": str(exc)[:MAX_MESSAGE],
            "traceback": str(getattr(einfo, "traceback", "") or ""),
            "attempts": self.attempt(),
            "first_failed_at": datetime.fromisoformat(first) if first else now,
            "died_at": now,
            "worker": self.request.hostname or socket.gethostname(),
            "breaker_states": states_snapshot(),
            "workflow_id": self.request.get(headers.CONDUCTOR_WORKFLOW),
            "conductor_task_id": self.request.get(headers.CONDUCTOR_TASK),
            # A hard time limit calls this in the worker's main process, outside the
            # request: its id is then the task id passed in, not "None".
            "idempotency_key": self.request.get(headers.IDEMPOTENCY_KEY) or task_id,
        }
        recorded = DeadLetterStore().record(fields)
        flow.unique.release_for(self, task_id, args, kwargs, fields["project_id"])
        log.error("task %s[%s] is dead after %d attempt(s): %s: %s (dead letter %s)",
                  self.name, task_id, fields["attempts"], fields["exception_type"], exc,
                  recorded.letter_id or recorded.outcome)
        history.capture(history.record(make_event(
            "dead", task_id=task_id, task_name=self.name, project_id=fields["project_id"],
            user_id=fields["user_id"], state="FAILURE", attempt=fields["attempts"],
            exception=fields["exception_type"], message=fields["exception_message"][:500],
            letter_id=recorded.letter_id, worker=fields["worker"])))


def _seconds_until(when: Any) -> float:
    """A retry's ``when`` (a countdown in seconds or an ETA) as seconds from now."""
    if isinstance(when, datetime):
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return float(when) if isinstance(when, int | float) else 0.0
