"""The worker side of history that no Celery signal covers: a pool process lost."""

from __future__ import annotations

from typing import Any

from celery.exceptions import WorkerLostError
from celery.worker.request import Request

from k1.events import make_event
from k1.history.capture import capture, record


class LostRequest(Request):
    """A worker request that records ``lost`` when its pool process died under it and
    Celery gives the message back to the queue (``acks_late`` with
    ``reject_on_worker_lost``). No signal fires then, so without this record the task
    would look STARTED until the message is delivered again, minutes later.

    K1Task names it as its ``Request`` class.
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)  # ExceptionWithTraceback
        task = self.task
        # Billiard >= 4.3 reports a dead pool process as SystemExit; Celery treats it
        # as a lost worker unless the worker killed it on purpose (revoke, cancel).
        lost = isinstance(exc, WorkerLostError) or (
            isinstance(exc, SystemExit | KeyboardInterrupt)
            and not (self._already_cancelled or self._already_revoked))
        if (lost and task.acks_late and task.reject_on_worker_lost
                and not getattr(task, "retry_on_worker_lost", False)):
            from k1.events.signals import _request_fields

            capture(record(make_event("lost", state="REQUEUED", exception=type(exc).__name__,
                                      message=str(exc), **_request_fields(self))))
        return super().on_failure(exc_info, send_failed_event=send_failed_event,
                                  return_ok=return_ok)
