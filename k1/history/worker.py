"""The worker side of history that no Celery signal covers: a message handed back."""

from __future__ import annotations

from typing import Any

from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from k1.events import make_event
from k1.events.signals import _request_fields, _short
from k1.history.capture import capture, record


class HandBackRequest(Request):
    """A worker request that records the moment the worker gives a run's message back to
    the queue, as ``lost`` when its pool process died under it, else ``requeued``.

    Celery decides that in one place, ``reject(requeue=True)``, which this class hooks
    instead of repeating the decision: a pool process lost under the run (``acks_late``
    with ``reject_on_worker_lost``, unless the run had stored its success), a
    ``Reject(requeue=True)`` (a paused queue's hand-back, :mod:`k1.flow.queues`; a retry
    that could not be published), a hard time limit without ``acks_on_timeout``. No
    signal says it: ``task_failure`` is sent only when the message is *not* requeued, and
    ``worker_process_shutdown`` runs in a pool process that exits, not in one killed.
    Without this record the task would look STARTED until the message is delivered
    again, minutes later behind a backlog. (A whole worker killed records nothing; the
    next delivery of the attempt tells, :mod:`k1.history.fold`.)

    K1Task names it as its ``Request`` class.
    """

    failure: BaseException | None = None  # what the run ended with, for reject()

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        self.failure = getattr(exc_info.exception, "exc", exc_info.exception)  # unwrapped
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)

    def reject(self, requeue: bool = False) -> None:
        if requeue and not self.acknowledged:
            capture(record(self._hand_back()))
        super().reject(requeue=requeue)

    def _hand_back(self) -> dict[str, Any]:
        exc = self.failure
        # Billiard >= 4.3 reports a dead pool process as SystemExit (Celery requeues it as
        # a WorkerLostError; one it killed itself, revoked or cancelled, is not requeued).
        if isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt):
            message = (str(exc) if isinstance(exc, WorkerLostError)
                       else f"Worker exited prematurely: {exc!r}.")
            return make_event("lost", state="REQUEUED", exception=WorkerLostError.__name__,
                              message=_short(message), **_request_fields(self))
        return make_event("requeued", state="REQUEUED",
                          exception=type(exc).__name__ if exc else None,
                          message=_short(str(exc)) if exc else None, **_request_fields(self))
