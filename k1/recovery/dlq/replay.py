"""Replay: a dead letter's task sent again, through the one way K1 sends a task
(:func:`k1.tasks.submissions.send`), inside the transaction that marks the letter replayed.

The task goes out with the letter's name, arguments, queue, project, user, idempotency key
and Conductor ids, and ``k1_replay_of``. A letter that is not ``dead`` any more, or whose
arguments were repaired to be stored (they differ from what the task first received), is
replayed only with ``force``.

An edited replay (:class:`Edit`) sends other ``args`` and/or ``kwargs``: a new submission
by whoever edits them, so they are checked like one (:func:`check_edit`: the task must be
one the caller may start, the arguments must fit it, a public task's ``kwargs.project_id``
stays the letter's project) and the task goes out with that user and ``k1_replay_edited``
naming what changed, which history records beside ``replay_of``. Edited arguments replace
repaired ones, so only a repair of what was *not* edited still needs ``force``. The
idempotency key stays the letter's: an edit corrects the same job, and side effects its
first runs completed are not done twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

import k1.headers
from k1.db import session_scope
from k1.recovery.dlq.filters import LetterFilter
from k1.recovery.dlq.models import DeadLetter
from k1.recovery.dlq.rows import LetterNotFound, id_batches, in_scope

REPLAY_BATCH = 500  # letters replayed per transaction in a bulk replay
REPAIRED_ARGUMENTS = ("args", "kwargs")


class ReplayRefused(Exception):
    """The letter was replayed or discarded already, or its arguments were repaired;
    ``force`` overrides.
    """


class EditNotAllowed(Exception):
    """The caller may not start the letter's task, so may not choose its arguments."""


class EditInvalid(ValueError):
    """Edited arguments a new submission would be refused with; ``field`` is the one at
    fault ("args" or "kwargs")."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class Edit:
    """Arguments to replay a letter with instead of its own; None keeps the letter's.

    ``user_id`` (who edits) is recorded as the replayed task's user: they vouch for the
    arguments. ``operator``: the editor's token is an operator's (operator-only tasks).
    """

    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    user_id: str | None = None
    operator: bool = False

    @property
    def fields(self) -> tuple[str, ...]:
        """What the edit changes: ("args",), ("kwargs",) or ("args", "kwargs")."""
        return tuple(name for name in REPAIRED_ARGUMENTS if getattr(self, name) is not None)


def replay(letter_id: int, *, force: bool = False, scope: frozenset[str] | None = None,
           edit: Edit | None = None) -> DeadLetter:
    """Send the letter's task again (with ``edit``'s arguments, checked by
    :func:`check_edit`) and mark the letter replayed with the new task id."""
    if edit is not None and not edit.fields:
        edit = None  # nothing changed: a plain replay
    with session_scope() as session:
        letter = session.get(DeadLetter, letter_id, with_for_update=True)
        if letter is None or not in_scope(letter, scope):
            raise LetterNotFound(letter_id)
        refusal = _refusal(letter, edit.fields if edit else ())
        if refusal and not force:
            raise ReplayRefused(f"{refusal}; force to replay it anyway")
        _resend(letter, edit=edit and check_edit(letter, edit))
    return letter


def check_edit(letter: DeadLetter, edit: Edit) -> Edit:
    """``edit`` checked like a new submission of the letter's task, with the kwargs it
    will send; raises :class:`EditNotAllowed` or :class:`EditInvalid`."""
    from k1.tasks.submissions import (
        NotAllowed,
        SubmissionError,
        check_arguments,
        check_startable,
        with_project,
    )

    try:
        check_startable(letter.task_name, operator=edit.operator)
    except NotAllowed as exc:
        raise EditNotAllowed(str(exc)) from None
    except SubmissionError:
        raise EditNotAllowed(f"task {letter.task_name!r} is not one a client may start: "
                             "replay its letter unchanged") from None
    args = letter.args if edit.args is None else edit.args
    kwargs = letter.kwargs if edit.kwargs is None else edit.kwargs
    try:
        if letter.project_id is not None:
            kwargs = with_project(kwargs, letter.project_id)
    except SubmissionError:
        raise EditInvalid("kwargs", f"project_id {kwargs.get('project_id')!r} is not the "
                                    f"letter's project {letter.project_id!r}") from None
    try:
        check_arguments(letter.task_name, args, kwargs)
    except SubmissionError as exc:
        raise EditInvalid(_field_at_fault(edit.fields, str(exc)), str(exc)) from None
    edited = list(args) if edit.args is not None else None
    return Edit(edited, kwargs if edit.kwargs is not None else None, edit.user_id, edit.operator)


def _field_at_fault(edited: tuple[str, ...], problem: str) -> str:
    """The edited field a signature problem is in: the one edited, else the positional
    arguments when the problem is about them (Python's binding says "positional")."""
    if len(edited) == 1:
        return edited[0]
    return "args" if "positional" in problem else "kwargs"


def replay_matching(filters: LetterFilter, *, force: bool = False,
                    progress: Callable[[int], None] | None = None) -> list[str]:
    """Replay every letter matching ``filters`` (skipping those :func:`replay` would refuse
    unless ``force``); returns the new task ids.
    """
    from k1.celery import app

    task_ids: list[str] = []
    for batch in id_batches(filters, REPLAY_BATCH):
        with session_scope() as session, app.producer_or_acquire() as producer:
            letters = session.scalars(
                select(DeadLetter).where(DeadLetter.id.in_(batch))
                .with_for_update(skip_locked=True).order_by(DeadLetter.id))
            for letter in letters:
                if _refusal(letter) and not force:
                    continue
                _resend(letter, producer)
                task_ids.append(letter.replay_task_id or "")
        if progress:
            progress(len(batch))
    return task_ids


def _refusal(letter: DeadLetter, edited: tuple[str, ...] = ()) -> str | None:
    if letter.status != "dead":
        return (f"letter {letter.id} is {letter.status} already"
                + (f" (as task {letter.replay_task_id})" if letter.replay_task_id else ""))
    repaired = sorted(set(letter.repairs or {}) & set(REPAIRED_ARGUMENTS) - set(edited))
    if repaired:
        return (f"letter {letter.id} has {' and '.join(repaired)} repaired to be stored "
                "(see its repairs): a replay would not send what the task first received")
    return None


def _resend(letter: DeadLetter, producer: Any = None, edit: Edit | None = None) -> None:
    """Send the letter's task again (with ``edit``'s checked arguments) and mark it
    replayed (inside the caller's transaction)."""
    from k1.tasks.submissions import send

    headers = {
        k1.headers.IDEMPOTENCY_KEY: letter.idempotency_key or letter.task_id,
        k1.headers.CONDUCTOR_WORKFLOW: letter.workflow_id,
        k1.headers.CONDUCTOR_TASK: letter.conductor_task_id,
        k1.headers.REPLAY_OF: letter.id,
        k1.headers.REPLAY_EDITED: ",".join(edit.fields) if edit else None,
    }
    args, kwargs, user_id = letter.args, letter.kwargs, letter.user_id
    if edit is not None:
        args = letter.args if edit.args is None else edit.args
        kwargs = letter.kwargs if edit.kwargs is None else edit.kwargs
        user_id = edit.user_id
    options: dict[str, Any] = {"queue": letter.queue} if letter.queue else {}
    letter.replay_task_id = send(
        letter.task_name, args, kwargs, project_id=letter.project_id,
        user_id=user_id, headers={k: v for k, v in headers.items() if v is not None},
        producer=producer, **options)
    letter.status = "replayed"
    letter.replay_count += 1
    letter.replayed_at = datetime.now(UTC)
