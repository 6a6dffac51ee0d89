"""Starting tasks, and remembering who started what.

There is one way to send a K1 task, :func:`send`: it stamps the project and user headers
and records the submission in Redis so that ``GET /api/tasks/<id>`` can answer for it
(404 for ids it never issued, 403 for other projects' tasks). Callers that vouch for the
task themselves (beat, the Conductor bridge, DLQ replay) call it directly; a start on
behalf of a client (the API, the CLI, the dashboard) goes through :func:`submit`, which
first checks that the caller may start the task and that its arguments fit::

    task_id = submit("k1.tasks.demo.flaky", kwargs={"fail_times": 1}, project_id="acme")
    task_id = send("k1.conductor.prune_executions", project_id=None)   # trusted caller

A task declared unique (:mod:`k1.flow.unique`) claims its key here first; a duplicate is
not sent and the id returned is the holder's. :func:`start` and :func:`dispatch` (what
:func:`submit` and :func:`send` wrap) say so: ``Sent(task_id, duplicate_of, claim)``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from celery.result import AsyncResult
from celery.utils import uuid
from celery.utils.time import maybe_timedelta

from k1 import headers as k1_headers
from k1.arguments import bound
from k1.celery import app, load_task_modules
from k1.connections import get_redis
from k1.flow import unique
from k1.history import capture as history
from k1.tasks import public_task_names

if TYPE_CHECKING:
    import redis.client

SUBMISSION_KEY = "k1:task:{}"
# A project id names rooms, Redis keys and dead-letter rows (a 255-character column).
MAX_PROJECT_ID = 255


class SubmissionError(ValueError):
    """The task or its arguments are wrong; the message says how."""


class NotAllowed(SubmissionError):
    """The task exists but the caller may not start it (operator-only)."""


@dataclass(frozen=True)
class Submission:
    task_id: str
    task: str
    project_id: str
    user_id: str | None
    submitted_at: float
    unique_key: str | None = None  # the Redis key of its unique claim (k1.flow.unique)


def validate_project_id(value: Any, field: str = "project_id") -> str:
    """``value`` as a project id, or :class:`SubmissionError` naming ``field``.

    A project id is a non-empty string of at most 255 printable characters (an integer is
    taken as its decimal form): nothing a Redis key, a room name or a database column
    would refuse or mangle (NUL, control characters, lone surrogates).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise SubmissionError(f"{field}: required, a string")
    problem = project_id_problem(value)
    if problem:
        raise SubmissionError(f"{field}: {problem}")
    return value


def project_id_problem(value: str) -> str | None:
    """What is wrong with the string ``value`` as a project id, or None (the one rule,
    also applied by the web contract's ``ProjectId``)."""
    if len(value) > MAX_PROJECT_ID:
        return f"at most {MAX_PROJECT_ID} characters"
    if not value.isprintable() or value != value.strip():
        return "printable characters only, no surrounding spaces"
    return None


def check_arguments(task_name: str, args: Sequence[Any] = (),
                    kwargs: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`SubmissionError` unless ``args``/``kwargs`` fit the task's signature
    and its own argument checks (:meth:`~k1.tasks.base.K1Task.check_arguments`)."""
    load_task_modules()
    task = app.tasks.get(task_name)
    if task is None:
        raise SubmissionError(f"unknown task {task_name!r}")
    try:
        arguments = bound(task.run, args, kwargs)
    except TypeError as exc:
        raise SubmissionError(f"arguments do not match {task_name}"
                              f"{inspect.signature(task.run)}: {exc}") from None
    check = getattr(task, "check_arguments", None)
    if check is not None:
        try:
            check(arguments)
        except ValueError as exc:
            raise SubmissionError(str(exc)) from None


def submit(task_name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
           **options: Any) -> str:
    """Start ``task_name`` on behalf of a client (the options of :func:`start`); returns the
    task id (for a duplicate of a unique task, the id of the task queued or running)."""
    return start(task_name, args, kwargs, **options).task_id


def start(
    task_name: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    project_id: str,
    user_id: str | None = None,
    operator: bool = False,
    headers: dict[str, Any] | None = None,
    **options: Any,
) -> Sent:
    """:func:`submit`, saying whether the submission was a duplicate.

    The task must be public (``operator``: or operator-only, for an operator's token), the
    project id valid, and the arguments must fit; ``project_id`` is passed as a keyword.
    Raises :class:`NotAllowed` for an operator-only task and a non-operator caller, and
    :class:`SubmissionError` for anything else that is wrong.
    """
    project_id = validate_project_id(project_id)
    check_startable(task_name, operator=operator)
    kwargs = with_project(kwargs, project_id)
    check_arguments(task_name, args, kwargs)
    return dispatch(task_name, args, kwargs, project_id=project_id, user_id=user_id,
                    headers=headers, **options)


def check_startable(task_name: str, *, operator: bool = False) -> None:
    """Raise unless a client may start ``task_name``: :class:`NotAllowed` for an
    operator-only task and a non-operator, :class:`SubmissionError` for a task that is not
    public (or does not exist)."""
    known = public_task_names(operator=operator)
    if task_name not in known:
        if task_name in public_task_names(operator=True):
            raise NotAllowed(f"task {task_name!r} acts platform-wide: operators only")
        raise SubmissionError(f"unknown task {task_name!r}; known tasks: {', '.join(known)}")


def with_project(kwargs: Mapping[str, Any] | None, project_id: str) -> dict[str, Any]:
    """``kwargs`` with ``project_id`` (a public task works for the project it is started
    for); :class:`SubmissionError` when they name another project."""
    kwargs = dict(kwargs or {})
    if kwargs.setdefault("project_id", project_id) != project_id:
        raise SubmissionError(
            f"kwargs.project_id {kwargs['project_id']!r} differs from project_id {project_id!r}"
        )
    return kwargs


def send(task_name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
         project_id: str | None, user_id: str | None = None,
         headers: dict[str, Any] | None = None, producer: Any = None,
         pipe: redis.client.Pipeline | None = None, **options: Any) -> str:
    """Send a task the caller vouches for (no public/argument checks), with K1's project and
    user headers, and record the submission (GET /api/tasks/<id>) when project_id is set --
    on ``pipe`` when given (the caller executes it), else at once. Returns the task id: for
    a unique task whose key is held, the holder's (nothing is sent; see :func:`dispatch`).

    ``options`` are Celery's ``apply_async`` options (``task_id``, ``queue``, ``countdown``,
    ``soft_time_limit``...). A task not registered in this process is sent by name.
    """
    return dispatch(task_name, args, kwargs, project_id=project_id, user_id=user_id,
                    headers=headers, producer=producer, pipe=pipe, **options).task_id


@dataclass(frozen=True)
class Sent:
    """What sending a task did: ``task_id`` is the task that will do the work; for a
    duplicate of a unique task, that is the holder of the key (``duplicate_of``) and
    ``claim`` says which key."""

    task_id: str
    duplicate_of: str | None = None
    claim: unique.Claim | None = None


def dispatch(task_name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
             *, project_id: str | None, user_id: str | None = None,
             headers: dict[str, Any] | None = None, producer: Any = None,
             pipe: redis.client.Pipeline | None = None, **options: Any) -> Sent:
    """:func:`send`, saying whether the task was a duplicate. A task declared unique
    (:mod:`k1.flow.unique`) first claims its key: if another task holds it, nothing is
    sent or recorded and that task is the answer."""
    stamped = {**(headers or {}), k1_headers.PROJECT: project_id, k1_headers.USER: user_id}
    stamped = {name: value for name, value in stamped.items() if value is not None}
    load_task_modules()
    task = app.tasks.get(task_name)
    claim = None
    if task is not None and unique.declared(task) is not None:
        options["task_id"] = options.get("task_id") or uuid()
        claim = unique.claim(task, args, kwargs, project_id, options["task_id"],
                             delay=_delay(options))
        if not claim.held:
            return Sent(claim.holder, duplicate_of=claim.holder, claim=claim)
    sent_at = time.time()  # before sending: the task may start before apply_async returns
    try:
        if task is not None:
            result = task.apply_async(args=list(args), kwargs=kwargs, headers=stamped,
                                      producer=producer, **options)
        else:
            result = app.send_task(task_name, args=list(args), kwargs=kwargs,
                                   headers=stamped, producer=producer, **options)
    except BaseException:
        if claim is not None:  # nothing was sent: the key is free again
            claim.release()
        raise
    submitted = history.submitted(result.id, task_name, args, kwargs, project_id=project_id,
                                  user_id=user_id, headers=stamped, ts=sent_at,
                                  queue=options.get("queue"))
    if pipe is not None:
        history.add(pipe, submitted)
    else:
        history.capture(submitted)
    if project_id is not None:
        record(Submission(result.id, task_name, project_id, user_id, time.time(),
                          claim.redis_key if claim else None), pipe=pipe)
    return Sent(result.id, claim=claim)


def _delay(options: Mapping[str, Any]) -> float:
    """Seconds until a task sent with ``options`` is due (its countdown or ETA)."""
    countdown, eta = options.get("countdown"), options.get("eta")
    if isinstance(countdown, int | float):
        return float(countdown)
    if isinstance(eta, datetime):
        return (eta - datetime.now(eta.tzinfo or UTC)).total_seconds()
    return 0.0


def record(submission: Submission, pipe: redis.client.Pipeline | None = None) -> None:
    """Remember ``submission`` for as long as Celery keeps results; on ``pipe`` if given."""
    key = SUBMISSION_KEY.format(submission.task_id)
    fields = {
        "task": submission.task,
        "project_id": submission.project_id,
        "user_id": submission.user_id or "",
        "submitted_at": submission.submitted_at,
        "unique_key": submission.unique_key or "",
    }
    ttl = int(maybe_timedelta(app.conf.result_expires).total_seconds())  # as long as results
    target = pipe if pipe is not None else get_redis().pipeline()
    target.hset(key, mapping=fields).expire(key, ttl)
    if pipe is None:
        target.execute()


def lookup(task_id: str) -> Submission | None:
    fields = get_redis().hgetall(SUBMISSION_KEY.format(task_id))
    if not fields:
        return None
    return Submission(
        task_id, fields["task"], fields["project_id"], fields["user_id"] or None,
        float(fields["submitted_at"]), fields.get("unique_key") or None,
    )


def status(submission: Submission) -> dict[str, Any]:
    """The submission with its current Celery state and outcome."""
    result = AsyncResult(submission.task_id, app=app)
    state = result.state
    body: dict[str, Any] = {
        "task_id": submission.task_id,
        "task": submission.task,
        "project_id": submission.project_id,
        "user_id": submission.user_id,
        "submitted_at": submission.submitted_at,
        "state": state,
        "retries": getattr(result, "retries", None),
        "date_done": result.date_done.isoformat() if result.date_done else None,
        "result": None,
        "error": None,
    }
    if submission.unique_key:
        body["unique"] = unique.describe(submission.unique_key, submission.task_id)
    if state == "SUCCESS":
        body["result"] = result.result
    elif state in ("FAILURE", "RETRY", "REVOKED"):
        exc = result.result
        body["error"] = {"type": type(exc).__name__, "message": str(exc)}
    return body
