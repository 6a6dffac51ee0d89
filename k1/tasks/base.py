"""``K1Task``: the base of every K1 task. It owns what happens when a task fails.

A failure is classified (:mod:`k1.recovery.errors`):

- transient: re-enqueued with the policy's backoff (Celery ``retry``), until the
  attempts run out;
- an open breaker: deferred until the breaker may half-open, without spending an
  attempt (bounded by ``max_deferrals``);
- non-transient, or out of attempts: the task fails for good and its dead letter is
  written (:class:`~k1.recovery.dlq.store.DeadLetterStore`).

Every K1 task takes ``project_id`` so that its events reach the right room and its dead
letters the right project::

    @app.task(base=K1Task, bind=True, retry_policy=RetryPolicy(attempts=5))
    def sync_account(self, project_id: str, account: str) -> dict: ...
"""

from __future__ import annotations

import logging
import random
import socket
from datetime import UTC, datetime
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Retry

from k1 import headers
from k1.recovery.errors import ErrorTable, Kind, classify
from k1.recovery.policy import DEFAULT_MAX_DEFER_WAIT, DEFAULT_POLICY, RetryPolicy

log = logging.getLogger(__name__)

DEFER_JITTER = 0.10  # up to +10 % on a deferral, so deferred tasks do not return in a herd
MAX_MESSAGE = 10_000  # characters of an exception message kept in a dead letter


class K1Task(Task):
    """Celery task with K1's retry policy, breaker deferral and dead-letter queue.

    :cvar public: listed by ``POST /api/tasks`` and the scheduler (internal tasks say no).
    :cvar retry_policy: the :class:`RetryPolicy` for this task.
    :cvar error_classes: rows consulted before the default classification table.
    """

    public: ClassVar[bool] = True
    retry_policy: RetryPolicy = DEFAULT_POLICY
    error_classes: ErrorTable = ()
    # The policy bounds attempts and deferrals; Celery's own cap (3) would cut them short.
    max_retries = None
    # Records a run whose pool process died as lost (task history), which no signal does.
    Request = "k1.history.worker:LostRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.run(*args, **kwargs)
        except Retry:
            raise
        except Exception as exc:
            self._retry_if_transient(exc)
            raise

    def policy(self) -> RetryPolicy:
        """The policy for the current call: the task's, with the call's header overrides."""
        return self.retry_policy.merged(self.request.get(headers.RETRY_POLICY))

    def deferrals(self) -> int:
        return int(self.request.get(headers.DEFERRALS) or 0)

    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ... (deferrals do not count)."""
        return self.request.retries - self.deferrals() + 1

    def idempotency_key(self) -> str:
        """Stable across retries and replays: side effects should be keyed by it."""
        return str(self.request.get(headers.IDEMPOTENCY_KEY) or self.request.id)

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
        raise self.retry(exc=exc, countdown=countdown, headers=carried)

    def on_failure(self, exc: Exception, task_id: str, args: tuple[Any, ...],
                   kwargs: dict[str, Any], einfo: Any) -> None:
        """The task failed for good: write its dead letter and announce the death."""
        from k1.events import emit
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
            "project_id": project_of(self, kwargs),
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
            "idempotency_key": self.idempotency_key(),
        }
        recorded = DeadLetterStore().record(fields)
        log.error("task %s[%s] is dead after %d attempt(s): %s: %s (dead letter %s)",
                  self.name, task_id, fields["attempts"], fields["exception_type"], exc,
                  recorded.letter_id or recorded.outcome)
        event = emit("task_event", type="dead", task_id=task_id, task_name=self.name,
             project_id=fields["project_id"], user_id=fields["user_id"], state="FAILURE",
             attempt=fields["attempts"], exception=fields["exception_type"],
             message=fields["exception_message"][:500], letter_id=recorded.letter_id)
        history.capture(history.record(event, worker=fields["worker"]))


def project_of(task: Task, kwargs: dict[str, Any] | None = None) -> str | None:
    """The project a task runs for: its ``project_id`` kwarg, else its header."""
    kwargs = kwargs if kwargs is not None else (task.request.kwargs or {})
    value = kwargs.get("project_id") or task.request.get(headers.PROJECT)
    return None if value is None else str(value)
