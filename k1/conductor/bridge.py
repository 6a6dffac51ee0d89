"""The bridge: a Conductor task of a K1 type runs as the K1 Celery task of the same name.

::

    Conductor ──poll──► conductor worker ──hand_off()──► Celery task (K1Task: retries,
        ▲                  │ IN_PROGRESS, callback         breakers, dead letters)
        │                  ▼                                    │ success / final failure
        └──── POST /api/tasks ◄──── settle() ◄──── reporter ◄── Celery signal (this module)

1. :func:`hand_off` (conductor worker): the first poll of a Conductor task claims it in
   Redis (``SET NX`` conductor task id → Celery task id) and sends the Celery task with
   the headers that tie it to the workflow; it answers IN_PROGRESS with a callback. A
   callback poll finds the claim and reports the Celery state instead of sending the task
   again, so a Conductor task never runs twice concurrently. While Redis (claims, broker,
   results) cannot be reached the answer is the same IN_PROGRESS with a short callback:
   an outage of K1's own Redis never fails the Conductor task (that would spend one of
   its few retries, and a long outage all of them, failing the workflow).
2. When the Celery task succeeds or dies, the signal handlers below only add a report to
   the report stream (:func:`report`, one Redis command); the reporter threads of the
   conductor worker (:mod:`k1.conductor.reports`) call :func:`settle` to complete or fail
   the Conductor task. The worker slot that ran the task never waits for Conductor: while
   the poller's IN_PROGRESS answer has not landed, or while Conductor cannot be reached,
   the report waits in the reporter (the callback poll of step 1 is a second way for the
   result to arrive).
3. A dead letter carries the workflow and task ids in its headers. Replaying it re-runs
   the Celery task; on success :func:`settle` completes the Conductor task if the
   workflow still waits for it, or else reruns the workflow from that task (the same
   Conductor task id is queued again, and its poll finds the replay's result).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from celery import Task, signals
from celery.exceptions import BackendGetMetaError
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from kombu.utils.json import dumps

from k1 import headers
from k1.celery import app
from k1.conductor import executions
from k1.conductor.client import (
    TERMINAL_TASK_STATUSES,
    TERMINAL_WORKFLOW_STATUSES,
    ConductorClient,
    worker_client,
)
from k1.connections import get_redis
from k1.events import emit
from k1.recovery.errors import Kind, classify
from k1.tasks import submissions

log = logging.getLogger(__name__)

CLAIM_KEY = "k1:conductor:task:{}"  # conductor task id -> the Celery task id running it
CLAIM_TTL = 7 * 24 * 3600  # as long as Celery keeps results (celeryconfig.result_expires)
# A callback poll comes back this long after IN_PROGRESS: the safety net for a report that
# could not reach Conductor. Normally the Celery task's own report completes it first.
CALLBACK_AFTER_SECONDS = 30
HANDOFF_RETRY_SECONDS = 5  # Redis or the broker could not take the task: ask again soon
# Redis unreachable, whichever way it shows: directly (claims, records), through kombu (a
# publish that used up its retries) or through the result backend (its retries used up).
UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
               OperationalError, BackendGetMetaError)
REPORT_TASK = "k1.conductor.report_outcome"  # reports enqueued before the report stream
REPORT_STREAM = "k1:conductor:reports"  # reports on their way to Conductor (reports.py)
REPORT_FIELD = "report"  # the stream entry's one field: the report as JSON
# Set by the poller once Conductor has its IN_PROGRESS answer for a task: the report may
# then be made (see HandOffPending), and need not ask Conductor to find out. Deleted by
# the report; the TTL only bounds a task whose report never comes.
ANSWERED_KEY = "k1:conductor:answered:{}"
MAX_REASON = 1000  # characters of a failure reason sent to Conductor
COMPLETED, FAILED, TERMINAL = "COMPLETED", "FAILED", "FAILED_WITH_TERMINAL_ERROR"
IN_PROGRESS = "IN_PROGRESS"


@dataclass(frozen=True)
class ConductorTask:
    """What the bridge needs of a polled Conductor task."""

    task_id: str
    workflow_id: str
    task_type: str
    input: dict[str, Any] = field(default_factory=dict)
    workflow_name: str | None = None

    @property
    def project_id(self) -> str | None:
        value = self.input.get("project_id")
        return None if value is None else str(value)


@dataclass(frozen=True)
class Answer:
    """The worker's answer to Conductor for one poll."""

    status: str  # IN_PROGRESS, COMPLETED, FAILED, FAILED_WITH_TERMINAL_ERROR
    output: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    callback_after_seconds: int | None = None


# --------------------------------------------------------------------------- hand-off


def hand_off(task: ConductorTask, callback_after: int = CALLBACK_AFTER_SECONDS) -> Answer:
    """Send ``task`` to Celery once, or report how its Celery task is doing; while Redis
    cannot be reached, ask Conductor to poll again in HANDOFF_RETRY_SECONDS.
    """
    try:
        return _hand_off(task, callback_after)
    except UNREACHABLE as exc:
        log.warning("conductor task %s (%s): Redis unreachable (%s); asking again in %ss",
                    task.task_id, task.task_type, exc, HANDOFF_RETRY_SECONDS)
        return Answer(IN_PROGRESS, callback_after_seconds=HANDOFF_RETRY_SECONDS)


def _hand_off(task: ConductorTask, callback_after: int) -> Answer:
    store = get_redis()
    claim = CLAIM_KEY.format(task.task_id)
    celery_id = str(uuid.uuid4())
    if not store.set(claim, celery_id, nx=True, ex=CLAIM_TTL):
        celery_id = store.get(claim) or celery_id
        answer = answer_from_celery(celery_id, callback_after)
        if (answer.output.get("celery_state") != "PENDING"
                or store.exists(submissions.SUBMISSION_KEY.format(celery_id))):
            return answer
        # Claimed but never sent: Redis went between the claim and the publish (the
        # submission record is written right after it). Send it now, under the claimed id:
        # should it have been sent after all (Redis went between the publish and the
        # record), it runs twice with one idempotency key, the Conductor task id.
        log.warning("conductor task %s: claimed as %s but never sent; sending it now",
                    task.task_id, celery_id)
    records = store.pipeline()
    try:
        send(task, celery_id, pipe=records)
    except Exception:
        # Nothing was sent: the next poll may send it (a claim left behind because Redis
        # went before this delete is sent by the next poll, above).
        store.delete(claim)
        log.exception("conductor task %s (%s): could not hand it to Celery; asking "
                      "again in %ss", task.task_id, task.task_type, HANDOFF_RETRY_SECONDS)
        return Answer(IN_PROGRESS, callback_after_seconds=HANDOFF_RETRY_SECONDS)
    log.info("conductor task %s (%s, workflow %s) handed to Celery as %s",
             task.task_id, task.task_type, task.workflow_id, celery_id)
    try:
        # Sent and claimed: a failure now must neither fail the attempt (Conductor would
        # schedule the task again) nor undo the claim (the next poll would send it again).
        # Missing records cost less: a 404 for GET /api/tasks/<id>, an unlisted execution.
        records.execute()
        executions.remember(task.workflow_id, task.workflow_name, project_id=task.project_id)
    except UNREACHABLE as exc:
        log.warning("conductor task %s: handed to Celery as %s, but its submission and "
                    "execution records were not written (%s)", task.task_id, celery_id, exc)
    emit("workflow_event", type="task_started", workflow_id=task.workflow_id,
         workflow_name=task.workflow_name, project_id=task.project_id,
         task_id=celery_id, task_name=task.task_type, conductor_task_id=task.task_id,
         state="STARTED")
    return Answer(IN_PROGRESS, {"celery_task_id": celery_id}, None, callback_after)


def send(task: ConductorTask, celery_id: str,
         pipe: redis.client.Pipeline | None = None) -> None:
    """Send the Celery task named like the Conductor task, its input as keyword arguments;
    ``GET /api/tasks/<id>`` answers for it like for any submission of its project (its
    record written on ``pipe`` when given: the caller executes it).
    """
    carried = {
        headers.CONDUCTOR_WORKFLOW: task.workflow_id,
        headers.CONDUCTOR_TASK: task.task_id,
        # Retries and replays keep it: side effects keyed by it happen once per Conductor task.
        headers.IDEMPOTENCY_KEY: task.task_id,
    }
    # The workflow was started for this project: the bridge vouches for the task.
    submissions.send(task.task_type, kwargs=dict(task.input), task_id=celery_id,
                     project_id=task.project_id, headers=carried, pipe=pipe)


def answer_from_celery(celery_id: str, callback_after: int = CALLBACK_AFTER_SECONDS) -> Answer:
    result = AsyncResult(celery_id, app=app)
    state = result.state
    if state == "SUCCESS":
        return Answer(COMPLETED, as_output(result.result))
    if state == "FAILURE":
        exc = result.result
        return Answer(failure_status(exc), reason=reason_of(exc))
    return Answer(IN_PROGRESS, {"celery_task_id": celery_id, "celery_state": state}, None,
                  callback_after)


def as_output(result: Any) -> dict[str, Any]:
    """A Celery result as Conductor output data (always an object)."""
    if isinstance(result, dict):
        return result
    return {} if result is None else {"result": result}


def failure_status(exc: BaseException | Any, task: Task | None = None) -> str:
    """FAILED_WITH_TERMINAL_ERROR when retrying cannot help, else FAILED (the task
    definition's retryCount then decides whether Conductor tries again).
    """
    if not isinstance(exc, BaseException):
        return FAILED
    extra = getattr(task, "error_classes", ()) if task is not None else ()
    return TERMINAL if classify(exc, extra).kind is Kind.DEAD else FAILED


def reason_of(exc: Any) -> str:
    text = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return text[:MAX_REASON]


# --------------------------------------------------------------------------- settle


def mark_answered(conductor_task_id: str) -> None:
    """Conductor has the poller's IN_PROGRESS answer for this task (never raises: without
    the mark the report asks Conductor instead)."""
    try:
        get_redis().set(ANSWERED_KEY.format(conductor_task_id), 1, ex=CLAIM_TTL)
    except redis.exceptions.RedisError as exc:
        log.warning("conductor task %s: answer not marked (%s)", conductor_task_id, exc)


class HandOffPending(Exception):
    """The Conductor task is still IN_PROGRESS: the poller's answer has not landed yet.

    A fast Celery task can finish before the poller's IN_PROGRESS answer reaches
    Conductor; that late IN_PROGRESS would then undo a COMPLETED sent first (the task
    would wait for its callback). A handed-off task is SCHEDULED (waiting for its
    callback) once the answer is in: report then.
    """


def settle(conductor_task_id: str, workflow_id: str, status: str, *,
           output: dict[str, Any] | None = None, reason: str | None = None,
           celery_task_id: str | None = None, task_name: str | None = None,
           check_state: bool = True, pending_ok: bool = False,
           client: ConductorClient | None = None) -> str:
    """Report a Celery outcome to Conductor; returns what was done.

    ``"updated"``: the task was completed or failed. A terminal task is left alone
    (``"ignored"``), except with ``check_state`` (replays, deferred reports): a success
    for a task whose workflow has failed reruns the workflow from that task (``"rerun"``).
    Raises :class:`HandOffPending` while the task is IN_PROGRESS, unless ``pending_ok``
    (the caller has waited long enough: report anyway).
    """
    client = client or worker_client()
    task = client.get_task(conductor_task_id)
    if task.get("status") == IN_PROGRESS and not pending_ok:
        raise HandOffPending(f"conductor task {conductor_task_id} is still IN_PROGRESS")
    if task.get("status") in TERMINAL_TASK_STATUSES:
        if not check_state or status != COMPLETED or task.get("status") == COMPLETED:
            return "ignored"
        workflow = client.get_workflow(workflow_id)
        if workflow.get("status") not in TERMINAL_WORKFLOW_STATUSES - {COMPLETED}:
            log.info("conductor task %s succeeded on replay but workflow %s is %s; "
                     "nothing to resume", conductor_task_id, workflow_id,
                     workflow.get("status"))
            return "ignored"
        if celery_task_id:  # the re-queued task's poll must find this success
            get_redis().set(CLAIM_KEY.format(conductor_task_id), celery_task_id,
                            ex=CLAIM_TTL)
        client.rerun_from_task(workflow_id, conductor_task_id)
        log.info("workflow %s rerun from task %s after a successful replay",
                 workflow_id, conductor_task_id)
        _announce_workflow(workflow, "started", rerun_from_task_id=conductor_task_id)
        return "rerun"
    ref = task.get("referenceTaskName")
    if status == COMPLETED and ref:  # one call: the update answers with the workflow
        workflow = client.complete_task_sync(workflow_id, ref, output or {})
    else:  # a failure carries its reason, which only the plain update takes
        client.update_task(workflow_id, conductor_task_id, status, output=output,
                           reason=reason)
        workflow = client.get_workflow(workflow_id)
    _announce_workflow(workflow, "task_completed" if status == COMPLETED else "task_failed",
                       conductor_task_id=conductor_task_id, task_id=celery_task_id,
                       task_name=task_name, reason=reason)
    if workflow.get("status") in TERMINAL_WORKFLOW_STATUSES:
        _announce_workflow(workflow, "completed" if workflow["status"] == COMPLETED
                           else "failed", reason=workflow.get("reasonForIncompletion"))
    return "updated"


def _announce_workflow(workflow: dict[str, Any], event_type: str, **fields: Any) -> None:
    emit("workflow_event", type=event_type, workflow_id=workflow.get("workflowId"),
         workflow_name=workflow.get("workflowName"),
         workflow_version=workflow.get("workflowVersion"),
         project_id=(workflow.get("input") or {}).get("project_id"),
         state=workflow.get("status"), **fields)


def report(conductor_task_id: str, workflow_id: str, status: str, *,
           output: dict[str, Any] | None = None, reason: str | None = None,
           celery_task_id: str | None = None, task_name: str | None = None,
           check_state: bool, project_id: str | None = None) -> None:
    """Add the report to the report stream (one Redis command), so the worker slot that
    ran the task is free at once; a reporter in ``k1 conductor-worker`` makes it
    (:mod:`k1.conductor.reports`).
    """
    report = {"conductor_task_id": conductor_task_id, "workflow_id": workflow_id,
              "status": status, "output": output, "reason": reason,
              "celery_task_id": celery_task_id, "task_name": task_name,
              "project_id": project_id, "check_state": check_state}
    # kombu's JSON, as the task's own result went: what Celery could send, this can.
    get_redis().xadd(REPORT_STREAM, {REPORT_FIELD: dumps(report)})


# --------------------------------------------------------------------------- signals


def _conductor_ids(task: Task) -> tuple[str, str] | None:
    request = task.request
    conductor_task_id = request.get(headers.CONDUCTOR_TASK)
    workflow_id = request.get(headers.CONDUCTOR_WORKFLOW)
    if not conductor_task_id or not workflow_id:
        return None
    return str(conductor_task_id), str(workflow_id)


@signals.task_success.connect
def _on_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    if sender is None or (ids := _conductor_ids(sender)) is None:
        return
    replayed = sender.request.get(headers.REPLAY_OF) is not None
    report(*ids, COMPLETED, output=as_output(result), celery_task_id=sender.request.id,
           task_name=sender.name, check_state=replayed,
           project_id=sender.request.get(headers.PROJECT))


@signals.task_failure.connect
def _on_failure(sender: Task | None = None, task_id: str | None = None,
                exception: BaseException | None = None, **_: Any) -> None:
    if sender is None or (ids := _conductor_ids(sender)) is None:
        return
    report(*ids, failure_status(exception, sender), reason=reason_of(exception),
           celery_task_id=task_id, task_name=sender.name, check_state=False,
           project_id=sender.request.get(headers.PROJECT))
