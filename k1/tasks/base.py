"""``K1Task``: the base of every K1 task. It owns the retry decision.

A failure is classified (:mod:`k1.recovery.errors`); a transient one is retried by
re-enqueueing with the policy's countdown; a non-transient one, or the last attempt,
fails the task for good. Every K1 task takes ``project_id`` so that its events reach the
right room and its dead letters the right project::

    @app.task(base=K1Task, bind=True, retry_policy=RetryPolicy(attempts=5))
    def sync_account(self, project_id: str, account: str) -> dict: ...
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from celery import Task
from celery.exceptions import Retry

from k1.recovery.errors import ErrorTable, Kind, classify
from k1.recovery.policy import DEFAULT_POLICY, RetryPolicy

log = logging.getLogger(__name__)

RETRY_HEADER = "k1_retry"  # per-call policy overrides: headers={"k1_retry": {...}}
PROJECT_HEADER = "k1_project_id"
USER_HEADER = "k1_user_id"


class K1Task(Task):
    """Celery task with K1's retry policy and error classification.

    :cvar public: listed by ``POST /api/tasks`` and the scheduler (internal tasks say no).
    :cvar retry_policy: the :class:`RetryPolicy` for this task.
    :cvar error_classes: rows consulted before the default classification table.
    """

    public: ClassVar[bool] = True
    retry_policy: RetryPolicy = DEFAULT_POLICY
    error_classes: ErrorTable = ()

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
        return self.retry_policy.merged(self.request.get(RETRY_HEADER))

    def attempt(self) -> int:
        """1 for the first run, 2 for the first retry, ..."""
        return self.request.retries + 1

    def _retry_if_transient(self, exc: Exception) -> None:
        verdict = classify(exc, self.error_classes)
        policy = self.policy()
        if verdict.kind is Kind.DEAD or not policy.should_retry(self.request.retries):
            return
        countdown = policy.countdown(self.request.retries, verdict.retry_after)
        log.warning(
            "task %s[%s] attempt %d failed (%s: %s); retrying in %.2fs",
            self.name, self.request.id, self.attempt(), type(exc).__name__, exc, countdown,
        )
        raise self.retry(exc=exc, countdown=countdown, max_retries=None)


def project_of(task: Task, kwargs: dict[str, Any] | None = None) -> str | None:
    """The project a task runs for: its ``project_id`` kwarg, else its header."""
    kwargs = kwargs if kwargs is not None else (task.request.kwargs or {})
    value = kwargs.get("project_id") or task.request.get(PROJECT_HEADER)
    return None if value is None else str(value)
