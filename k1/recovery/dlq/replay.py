"""Replay: a dead letter's task sent again, through the one way K1 sends a task
(:func:`k1.tasks.submissions.send`), inside the transaction that marks the letter replayed.

The task goes out with the letter's name, arguments, queue, project, user, idempotency key
and Conductor ids, and ``k1_replay_of``. A letter that is not ``dead`` any more, or whose
arguments were repaired to be stored (they differ from what the task first received), is
replayed only with ``force``.
"""

from __future__ import annotations

from collections.abc import Callable
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


def replay(letter_id: int, *, force: bool = False,
           scope: frozenset[str] | None = None) -> DeadLetter:
    """Send the letter's task again and mark the letter replayed with the new task id."""
    with session_scope() as session:
        letter = session.get(DeadLetter, letter_id, with_for_update=True)
        if letter is None or not in_scope(letter, scope):
            raise LetterNotFound(letter_id)
        refusal = _refusal(letter)
        if refusal and not force:
            raise ReplayRefused(f"{refusal}; force to replay it anyway")
        _resend(letter)
    return letter


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


def _refusal(letter: DeadLetter) -> str | None:
    if letter.status != "dead":
        return (f"letter {letter.id} is {letter.status} already"
                + (f" (as task {letter.replay_task_id})" if letter.replay_task_id else ""))
    repaired = sorted(set(letter.repairs or {}) & set(REPAIRED_ARGUMENTS))
    if repaired:
        return (f"letter {letter.id} has {' and '.join(repaired)} repaired to be stored "
                "(see its repairs): a replay would not send what the task first received")
    return None


def _resend(letter: DeadLetter, producer: Any = None) -> None:
    """Send the letter's task again and mark it replayed (inside the caller's transaction)."""
    from k1.tasks.submissions import send

    headers = {
        k1.headers.IDEMPOTENCY_KEY: letter.idempotency_key or letter.task_id,
        k1.headers.CONDUCTOR_WORKFLOW: letter.workflow_id,
        k1.headers.CONDUCTOR_TASK: letter.conductor_task_id,
        k1.headers.REPLAY_OF: letter.id,
    }
    options: dict[str, Any] = {"queue": letter.queue} if letter.queue else {}
    letter.replay_task_id = send(
        letter.task_name, letter.args, letter.kwargs, project_id=letter.project_id,
        user_id=letter.user_id, headers={k: v for k, v in headers.items() if v is not None},
        producer=producer, **options)
    letter.status = "replayed"
    letter.replay_count += 1
    letter.replayed_at = datetime.now(UTC)
