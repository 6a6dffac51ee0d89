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

**A letter is never marked replayed without its task sent, and never sent twice.** A
replay is three steps in one transaction: lock the letters (``SELECT ... FOR UPDATE``) and
build what to send; send; mark the letters whose send returned and commit. A concurrent
replay of the same letter waits for the row (a bulk one skips it) and then finds it
replayed; a send that raises leaves its letter dead (the letters sent before it in a batch
are still marked). Only a commit that fails after the sends leaves sent letters dead, and a
second replay of one sends the same idempotency key, so its side effects are not repeated.

The database steps run through ``offload`` and the sends in the caller's thread: the web
process passes :func:`k1.web.offload.blocking`, so psycopg stays off eventlet's hub while
kombu's producers and connections, which are green there, never leave it (a pool thread
that touches them can hang or fail with "Cannot switch to a different thread").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

import k1.headers
from k1.db import session_scope
from k1.recovery.dlq.filters import LetterFilter
from k1.recovery.dlq.models import DeadLetter
from k1.recovery.dlq.rows import LetterNotFound, id_batches, in_scope

REPLAY_BATCH = 500  # letters replayed per transaction in a bulk replay
REPAIRED_ARGUMENTS = ("args", "kwargs")
P = ParamSpec("P")
R = TypeVar("R")
Offload = Callable[..., Any]  # runs a database step: ``offload(fn, *args)`` -> fn(*args)


def in_this_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """The ``offload`` of a process without eventlet (CLI, workers): call ``fn`` here."""
    return fn(*args, **kwargs)


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
           edit: Edit | None = None, offload: Offload = in_this_thread) -> DeadLetter:
    """Send the letter's task again (with ``edit``'s arguments, checked by
    :func:`check_edit`) and mark the letter replayed with the new task id."""
    if edit is not None and not edit.fields:
        edit = None  # nothing changed: a plain replay

    def lock(session: Session) -> list[tuple[DeadLetter, Resend]]:
        letter = session.get(DeadLetter, letter_id, with_for_update=True)
        if letter is None or not in_scope(letter, scope):
            raise LetterNotFound(letter_id)
        refusal = _refusal(letter, edit.fields if edit else ())
        if refusal and not force:
            raise ReplayRefused(f"{refusal}; force to replay it anyway")
        return [(letter, Resend.of(letter, edit and check_edit(letter, edit)))]

    (letter,) = _replay_locked(lock, offload)
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
                    progress: Callable[[int], None] | None = None,
                    offload: Offload = in_this_thread) -> list[str]:
    """Replay every letter matching ``filters`` (skipping those :func:`replay` would refuse
    unless ``force``); returns the new task ids.
    """
    task_ids: list[str] = []
    batches = id_batches(filters, REPLAY_BATCH)
    while (batch := offload(next, batches, None)) is not None:

        def lock(session: Session, batch: list[int] = batch) -> list[tuple[DeadLetter, Resend]]:
            letters = session.scalars(
                select(DeadLetter).where(DeadLetter.id.in_(batch))
                .with_for_update(skip_locked=True).order_by(DeadLetter.id))
            return [(letter, Resend.of(letter)) for letter in letters
                    if force or not _refusal(letter)]

        task_ids += [letter.replay_task_id or "" for letter in _replay_locked(lock, offload)]
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


@dataclass(frozen=True)
class Resend:
    """What replaying one letter sends (built inside the transaction that locked it)."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    project_id: str | None
    user_id: str | None
    headers: dict[str, Any]
    options: dict[str, Any]

    @classmethod
    def of(cls, letter: DeadLetter, edit: Edit | None = None) -> Resend:
        """The letter's task as it first ran (with ``edit``'s checked arguments)."""
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
        return cls(letter.task_name, list(args), dict(kwargs), letter.project_id, user_id,
                   {k: v for k, v in headers.items() if v is not None},
                   {"queue": letter.queue} if letter.queue else {})

    def send(self, producer: Any) -> str:
        """Send the task (:func:`k1.tasks.submissions.send`); its id."""
        from k1.tasks.submissions import send

        return send(self.task_name, self.args, self.kwargs, project_id=self.project_id,
                    user_id=self.user_id, headers=self.headers, producer=producer,
                    **self.options)


def _replay_locked(lock: Callable[[Session], list[tuple[DeadLetter, Resend]]],
                   offload: Offload) -> list[DeadLetter]:
    """The three steps of a replay (see the module's docstring): ``lock`` picks the letters
    in a new transaction (through ``offload``), each one's task is sent in this thread,
    then the letters sent are marked and the transaction committed (through ``offload``).
    Returns the letters; a send that raises is raised once those before it are marked."""
    transaction = ExitStack()
    picked = offload(_begin, transaction, lock)
    sent: list[str] = []
    try:
        for task_id in _send_all([resend for _, resend in picked]):
            sent.append(task_id)  # one by one: a later send that raises keeps these
    finally:
        offload(_mark_and_commit, transaction, [letter for letter, _ in picked], sent)
    return [letter for letter, _ in picked]


def _begin(transaction: ExitStack,
           lock: Callable[[Session], list[tuple[DeadLetter, Resend]]]
           ) -> list[tuple[DeadLetter, Resend]]:
    """Open the replay's transaction on ``transaction`` and lock its letters; rolled back
    here if ``lock`` raises (the letter is not there, or refused)."""
    session = transaction.enter_context(session_scope())
    try:
        return lock(session)
    except BaseException as exc:
        transaction.__exit__(type(exc), exc, exc.__traceback__)
        raise


def _send_all(resends: list[Resend]) -> Iterator[str]:
    """Each task sent in turn (one producer for them all), its id as it goes out."""
    if not resends:
        return
    from k1.celery import app

    with app.producer_or_acquire() as producer:
        for resend in resends:
            yield resend.send(producer)


def _mark_and_commit(transaction: ExitStack, letters: list[DeadLetter],
                     task_ids: list[str]) -> None:
    """Mark the first ``len(task_ids)`` letters replayed as those tasks, and commit."""
    with transaction:
        for letter, task_id in zip(letters, task_ids, strict=False):
            letter.replay_task_id = task_id
            letter.status = "replayed"
            letter.replay_count += 1
            letter.replayed_at = datetime.now(UTC)
