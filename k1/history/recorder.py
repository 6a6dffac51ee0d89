"""The recorder: history records from the Redis Stream into the database, in batches.

``k1 history-recorder`` runs :meth:`Recorder.run`. Every recorder is a consumer of one
group on the stream, so several may run at once and each record goes to one of them:

1. read up to :data:`BATCH` records (``XREADGROUP``), after first claiming records that
   a recorder which died left pending for longer than ``claim_idle`` (``XAUTOCLAIM``);
2. write them in one transaction (:func:`k1.history.store.write`, idempotent);
3. ``XACK`` them. A recorder killed between 2 and 3 leaves them pending; whoever claims
   them writes them again, which changes nothing.

While the database is down the batch is retried (backing off to :data:`MAX_RETRY_DELAY`)
and nothing is acknowledged, so the records wait in the stream. While Redis is down the
recorder waits the same way and goes on where it was once Redis answers (a batch written
but not acknowledged is claimed and written again, which changes nothing; a group Redis
lost with its data is created again). A batch that fails for
another reason (the database refuses a value, a record cannot be folded) is written
record by record, and a record that still fails is logged with its content and
acknowledged, so that one bad record never stops history.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis
from sqlalchemy.exc import InterfaceError, OperationalError

from k1 import streams
from k1.history import store
from k1.history.stream import RECORD_FIELD, STREAM_KEY

log = logging.getLogger(__name__)

GROUP = "k1-history-recorders"
BATCH = 500  # records per read and per transaction: one commit carries many tasks
BLOCK_MS = 1000  # ms XREADGROUP waits for records, so a stop is noticed within a second
CLAIM_IDLE = 60.0  # s: a record unacknowledged this long belonged to a recorder that died
MIN_RETRY_DELAY = 0.5  # s: first wait after the database (or Redis) did not answer
MAX_RETRY_DELAY = 15.0  # s: the longest wait between tries while either is down


class Recorder:
    """One consumer of the history stream (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, name: str | None = None, batch: int = BATCH,
                 claim_idle: float = CLAIM_IDLE,
                 write: Callable[[Sequence[dict[str, Any]]], int] = store.write) -> None:
        self.redis, self.batch, self.write = client, batch, write
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle * 1000)
        self.stopping = threading.Event()
        self.written = 0

    def ensure_group(self) -> None:
        """Create the group (reading from the stream's start) unless it exists."""
        streams.ensure_group(self.redis, STREAM_KEY, GROUP)

    def run(self) -> None:
        """Record until :meth:`stop`, through Redis and database outages."""
        log.info("history recorder %s reading %s as group %s", self.name, STREAM_KEY, GROUP)
        streams.consume(self.redis, STREAM_KEY, GROUP, self.step, self.stopping,
                        what="history stream", min_delay=MIN_RETRY_DELAY,
                        max_delay=MAX_RETRY_DELAY)

    def stop(self) -> None:
        self.stopping.set()

    def step(self) -> int:
        """Claim or read one batch, write it, acknowledge it; returns how many records."""
        entries = self._claim() or self._read()
        if not entries:
            return 0
        ids = [entry_id for entry_id, _ in entries]
        records = [record for _, record in entries if record is not None]
        if records and not self._write_until_done(records):
            return 0  # stopping while the database is down: the records stay pending
        self.redis.xack(STREAM_KEY, GROUP, *ids)
        return len(ids)

    def _claim(self) -> list[tuple[str, dict[str, Any] | None]]:
        _next, claimed, *_deleted = self.redis.xautoclaim(
            STREAM_KEY, GROUP, self.name, self.claim_idle_ms, start_id="0-0", count=self.batch)
        if claimed:
            log.info("claimed %d history record(s) left pending by another recorder",
                     len(claimed))
        return [(_text(entry_id), _parse(fields)) for entry_id, fields in claimed]

    def _read(self) -> list[tuple[str, dict[str, Any] | None]]:
        answer = self.redis.xreadgroup(GROUP, self.name, {STREAM_KEY: ">"}, count=self.batch,
                                       block=BLOCK_MS)
        return [(_text(entry_id), _parse(fields))
                for _stream, entries in answer or [] for entry_id, fields in entries]

    def _write_until_done(self, records: list[dict[str, Any]]) -> bool:
        delay = MIN_RETRY_DELAY
        while True:
            try:
                self.written += self.write(records)
                return True
            except (OperationalError, InterfaceError) as exc:  # the database is away
                log.warning("history batch of %d not written (%s); retrying in %.1fs",
                            len(records), streams.first_line(exc), delay)
            except Exception as exc:  # something in the batch is refused
                log.error("history batch refused (%s); writing its records one by one",
                          streams.first_line(exc))
                return self._write_one_by_one(records)
            if self.stopping.wait(delay):
                return False
            delay = min(delay * 2, MAX_RETRY_DELAY)

    def _write_one_by_one(self, records: list[dict[str, Any]]) -> bool:
        for record in records:
            try:
                self.written += self.write([record])
            except (OperationalError, InterfaceError):
                if not self._write_until_done([record]):
                    return False
            except Exception as exc:  # one bad record must not stop history
                log.error("history record dropped, it cannot be stored (%s): %s",
                          streams.first_line(exc), json.dumps(record, default=str))
        return True


def _parse(fields: dict[Any, Any]) -> dict[str, Any] | None:
    raw = fields.get(RECORD_FIELD) or fields.get(RECORD_FIELD.encode())
    try:
        record = json.loads(raw if raw is not None else "")
    except (TypeError, ValueError):
        log.error("history stream entry is not a record, skipped: %r", fields)
        return None
    return record if isinstance(record, dict) else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
