"""Effects that happen once per idempotency key, on at-least-once delivery.

Celery delivers a K1 task at least once: with ``acks_late`` a worker process killed after
a task's side effect but before the acknowledgement gives the message back, and the task
runs again; retries and DLQ replays run it again on purpose. A task therefore performs
each side effect through its :class:`Effects` (``self.effects``), which keeps a ledger
keyed by (idempotency key, effect name) holding the effect's result: a rerun finds the
entry and gets the kept result instead of doing the effect twice::

    @app.task(base=K1Task, bind=True)
    def credit(self, project_id: str, account: str, amount: int) -> int:
        def add(pipe, current):                      # pipe is in MULTI: queue writes
            balance = int(current[f"balance:{account}"] or 0) + amount
            pipe.set(f"balance:{account}", balance)
            return balance                           # kept in the ledger (JSON)
        return self.effects.redis("credit", add, watch=[f"balance:{account}"])

- **Redis effects** (:meth:`Effects.redis`) are atomic with their ledger entry: the
  effect's writes and the entry go in one MULTI/EXEC, guarded by WATCH on the entry and
  on the keys the effect reads, so they happen together or not at all.
- **PostgreSQL effects** (:meth:`Effects.sql`) are atomic the same way: the effect's
  statements and the ledger row (:class:`EffectEntry`) commit in one transaction.
- **External calls** (:meth:`Effects.external`) cannot share a transaction with the
  ledger, so the remote side deduplicates: the call gets the effect's own idempotency key
  (:func:`effect_key`, stable across reruns) to send as an ``Idempotency-Key`` header,
  and the ledger keeps the answer so that a rerun does not even call.

The idempotency key is the task's ``k1_idempotency_key`` header (kept by retries and DLQ
replays; the Conductor bridge sets it to the Conductor task id), else the task id. An
effect that should happen once per *attempt* rather than once per task names the
attempt in its effect name (``flaky`` does).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
import redis.client
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from k1.connections import get_redis
from k1.db import Base, session_scope

T = TypeVar("T")

LEDGER_KEY = "k1:effect:{}"  # + effect_key(...): JSON {key, name, result, at}
# An entry must outlive every rerun of its task: redeliveries (within the broker's
# visibility timeout), retries, and DLQ replays of letters kept for days.
LEDGER_TTL = 30 * 24 * 3600  # 30 days
# uuid5 namespace of effect keys: the same (key, name) gives the same key everywhere.
EFFECT_NAMESPACE = uuid.UUID("5b0e7f3c-2d4a-4c1e-9a57-6f1d3e8b2c40")


def effect_key(idempotency_key: str, name: str) -> str:
    """The idempotency key of effect ``name`` of the task keyed ``idempotency_key``.

    A UUID, so it fits any ``Idempotency-Key`` header whatever the task key contains.
    """
    return str(uuid.uuid5(EFFECT_NAMESPACE, json.dumps([idempotency_key, name])))


RedisEffect = Callable[[redis.client.Pipeline, Mapping[str, str | None]], T]


class EffectEntry(Base):
    """The ledger row of an effect done in PostgreSQL, committed with the effect."""

    __tablename__ = "effect_ledger"

    effect_key: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(sa.Text())
    name: Mapped[str] = mapped_column(sa.String(255))
    result: Mapped[Any] = mapped_column(sa.JSON().with_variant(postgresql.JSONB(),
                                                               "postgresql"))
    done_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class Effects:
    """The effects of one task run (or any caller with an idempotency key).

    :param idempotency_key: what makes two runs "the same work".
    :param client: the Redis holding the ledger (default: K1's).
    """

    def __init__(self, idempotency_key: str, client: redis.Redis | None = None) -> None:
        self.idempotency_key = idempotency_key
        self.client = client if client is not None else get_redis()

    def key(self, name: str) -> str:
        """This run's idempotency key for effect ``name`` (what the remote side sees)."""
        return effect_key(self.idempotency_key, name)

    def done(self, name: str) -> bool:
        """True when the Redis or external effect ``name`` happened already (its entry is in
        the Redis ledger; a database effect's row is in ``effect_ledger``)."""
        return bool(self.client.exists(self._ledger(name)))

    def redis(self, name: str, effect: RedisEffect[T], *, watch: Sequence[str] = ()) -> T:
        """Perform the Redis effect ``name`` once, atomically with its ledger entry.

        ``effect(pipe, current)`` gets the pipeline in MULTI mode and ``current``, the
        values of the ``watch`` keys (strings or None) read under WATCH; it queues its
        writes on ``pipe`` and returns the effect's result (JSON-serialisable). If a
        watched key or the entry changes before EXEC, it runs again with fresh values.
        A rerun returns the kept result without calling ``effect``.
        """
        ledger = self._ledger(name)
        watched = list(watch)

        def attempt(pipe: redis.client.Pipeline) -> T:
            kept = pipe.get(ledger)
            if kept is not None:
                return json.loads(kept)["result"]
            current = dict(zip(watched, pipe.mget(watched), strict=True)) if watched else {}
            pipe.multi()
            result = effect(pipe, current)
            pipe.set(ledger, self._entry(name, result), ex=LEDGER_TTL)
            return result

        return self.client.transaction(attempt, ledger, *watched, value_from_callable=True)

    def sql(self, name: str, effect: Callable[[Session], T]) -> T:
        """Perform the database effect ``name`` once, in one transaction with its ledger row.

        ``effect(session)`` runs its statements on ``session`` and returns the effect's
        result (JSON-serialisable); the row is inserted before the commit. A rerun returns
        the kept result without calling ``effect``; a concurrent run's insert conflicts on
        the key, its transaction (effect included) rolls back, and it returns the winner's
        result.
        """
        key = self.key(name)
        try:
            with session_scope() as session:
                kept = session.get(EffectEntry, key)
                if kept is not None:
                    return kept.result
                result = effect(session)
                session.add(EffectEntry(effect_key=key, idempotency_key=self.idempotency_key,
                                        name=name, result=result, done_at=datetime.now(UTC)))
                session.flush()  # the insert waits for, then conflicts with, a concurrent run
                return result
        except IntegrityError:
            with session_scope() as session:
                winner = session.get(EffectEntry, key)
                if winner is None:  # the conflict was the effect's own, not the ledger's
                    raise
                return winner.result

    def external(self, name: str, call: Callable[[str], T]) -> T:
        """Perform the external effect ``name`` at most once as far as K1 can tell, and
        exactly once with a remote side that honours idempotency keys.

        ``call(key)`` performs it, sending ``key`` (:meth:`key`) to the remote side, and
        returns its result (JSON-serialisable), kept for reruns. A run killed between the
        call and the ledger write calls again with the same key: the remote side answers
        from its own record.
        """
        ledger = self._ledger(name)
        kept = self.client.get(ledger)
        if kept is not None:
            return json.loads(kept)["result"]
        result = call(self.key(name))
        self.client.set(ledger, self._entry(name, result), ex=LEDGER_TTL)
        return result

    def _ledger(self, name: str) -> str:
        return LEDGER_KEY.format(self.key(name))

    def _entry(self, name: str, result: Any) -> str:
        return json.dumps({"key": self.idempotency_key, "name": name, "result": result,
                           "at": time.time()})
