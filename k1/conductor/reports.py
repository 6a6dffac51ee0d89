"""The reporter: Celery outcomes from the report stream to Conductor, from ``k1 conductor-worker``.

::

    Celery signal (pool child) ──XADD──► k1:conductor:reports ──► Reporter (conductor process)
                                          (group k1-conductor-reporters)   │ THREADS at once
                                                                           ▼ settle()
                                                                        Conductor

The bridge's signal handlers only add the outcome to the stream (:func:`bridge.report`, one
Redis command); the reporter threads of every ``k1 conductor-worker`` consume it as one
group, so each report goes to one of them, and their Conductor calls overlap instead of
running one after the other in a Celery slot:

1. read reports (``XREADGROUP``), at most as many as there are idle threads, after first
   claiming those a reporter that died left pending for longer than ``claim_idle``
   (``XAUTOCLAIM``);
2. :func:`bridge.settle` each in a thread; ``XACK`` and ``XDEL`` it once Conductor has it.

A report waits without holding a thread: until the poller has marked its IN_PROGRESS
answer as landed (:func:`bridge.mark_answered`; a COMPLETED sent before it would be
undone by it) it looks for the mark again after ``MARK_RECHECK`` s, doubling, at most
``MARK_WAITS`` times; without a mark it asks Conductor, and while the task is still
IN_PROGRESS there (:class:`bridge.HandOffPending`) it is tried again after
``HANDOFF_RECHECK`` s, doubling, at most ``HANDOFF_MAX_WAITS`` times, then made anyway.
While Conductor cannot be reached (down, 5xx, breaker open) it is tried again after
``MIN_RETRY_DELAY`` s doubling to ``MAX_RETRY_DELAY``, for as long as it takes. Until it
is acknowledged a report stays pending in the stream, so a reporter killed, or stopped with
reports still waiting, loses none: another claims them once ``claim_idle`` has passed (a
waiting report is claimed again by its own reporter at every try, so it never looks
abandoned). A report Conductor refuses (the task or workflow is gone, 4xx) is logged and
dropped: retrying cannot help.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import tenacity
from kombu.utils.json import loads

from k1 import streams
from k1.conductor import bridge
from k1.conductor.client import (
    ConductorClient,
    ConductorError,
    ConductorUnavailable,
    ConductorUnreachable,
)

log = logging.getLogger(__name__)

GROUP = "k1-conductor-reporters"
THREADS = 4  # reports in flight per process: each is one or two Conductor round trips
BLOCK_MS = 500  # ms XREADGROUP waits, so that a stop is noticed within half a second
# s: a report unacknowledged this long belonged to a reporter that died. Longer than one
# report can take (two Conductor calls of up to 15 s read timeout each, then a retry), and
# than MAX_RETRY_DELAY, since a waiting report is claimed again at every try.
CLAIM_IDLE = 120.0
CLAIM_INTERVAL = 10.0  # s between looks for reports a dead reporter left pending
# The poller's IN_PROGRESS answer lands a few ms after the hand-off, and the poller then
# marks it in Redis (bridge.ANSWERED_KEY): look for the mark after 2 ms, doubling to at
# most 0.5 s, MARK_WAITS times (~1.5 s). No mark (a poller restarted before marking, Redis
# away then): ask Conductor, again after 20 ms, doubling to at most 0.5 s,
# HANDOFF_MAX_WAITS times (~3 s in all), then report anyway.
MARK_RECHECK = 0.002
MARK_WAITS = 10
HANDOFF_RECHECK = 0.02
HANDOFF_RECHECK_MAX = 0.5
HANDOFF_MAX_WAITS = 10
MIN_RETRY_DELAY = 2.0  # s: first wait after Conductor could not be reached
MAX_RETRY_DELAY = 60.0  # s: the longest wait between tries while it is down

# A short Conductor blip (a connection reset, a 503 during a restart's first second) is
# retried at once in-process: 3 tries within 1 s, then the caller waits longer.
settle_now = tenacity.retry(
    retry=tenacity.retry_if_exception_type(ConductorUnavailable),
    stop=tenacity.stop_after_attempt(3) | tenacity.stop_after_delay(1.0),  # not after a timeout
    wait=tenacity.wait_exponential(multiplier=0.1, max=0.2),
    reraise=True,
)(bridge.settle)


@dataclass(frozen=True)
class Report:
    """One report from the stream, with what its earlier tries saw."""

    entry_id: str
    fields: dict[str, Any]
    marks: int = 0  # looks that found no answered mark
    waits: int = 0  # tries that found the Conductor task still IN_PROGRESS
    failures: int = 0  # tries that could not reach Conductor


@dataclass(order=True)
class _Due:
    at: float
    report: Report = field(compare=False)


class Reporter:
    """One consumer of the report stream (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, name: str | None = None,
                 threads: int = THREADS, claim_idle: float = CLAIM_IDLE,
                 conductor_url: str | None = None) -> None:
        self.redis, self.threads = client, threads
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = int(claim_idle * 1000)
        self.conductor_url = conductor_url
        self.stopping = threading.Event()
        self.settled = 0  # reports Conductor has (or refused), acknowledged
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="k1-reporter")
        self._lock = threading.Condition()
        self._busy = 0  # reports in the pool
        self._held: set[str] = set()  # entry ids in the pool or waiting for a retry
        self._waiting: list[_Due] = []  # heap: reports to try again, soonest first
        self._clients = threading.local()
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> Reporter:
        """Run :meth:`run` in a background thread."""
        self._threads = [threading.Thread(target=self.run, name="k1-reporter-reader",
                                          daemon=True)]
        self._threads[0].start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop reading; reports being made are finished, waiting ones stay pending."""
        self.stopping.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def ensure_group(self) -> None:
        """Create the group (reading from the stream's start) unless it exists."""
        streams.ensure_group(self.redis, bridge.REPORT_STREAM, GROUP)

    def run(self) -> None:
        """Report until :meth:`stop`, through Redis and Conductor outages."""
        log.info("reporter %s reading %s as group %s", self.name, bridge.REPORT_STREAM, GROUP)
        retries = threading.Thread(target=self._retry_forever, name="k1-reporter-retries",
                                   daemon=True)
        retries.start()
        self._threads.append(retries)
        next_claim = 0.0

        def step() -> None:
            nonlocal next_claim
            if time.monotonic() >= next_claim:
                self._submit(self._claim())
                next_claim = time.monotonic() + CLAIM_INTERVAL
            self._submit(self._read())

        streams.consume(self.redis, bridge.REPORT_STREAM, GROUP, step, self.stopping,
                        what="report stream", min_delay=MIN_RETRY_DELAY / 4,
                        max_delay=MAX_RETRY_DELAY)

    # -- reading ---------------------------------------------------------------------

    def _idle_threads(self) -> int:
        with self._lock:
            return self.threads - self._busy

    def _read(self) -> list[Report]:
        free = self._idle_threads()
        if free <= 0:
            with self._lock:  # all threads busy: wait for one
                self._lock.wait_for(lambda: self._busy < self.threads or self.stopping.is_set(),
                                    timeout=BLOCK_MS / 1000)
            return []
        answer = self.redis.xreadgroup(GROUP, self.name, {bridge.REPORT_STREAM: ">"},
                                       count=free, block=BLOCK_MS)
        return [_report(entry_id, fields)
                for _stream, entries in answer or [] for entry_id, fields in entries]

    def _claim(self) -> list[Report]:
        _next, claimed, *_deleted = self.redis.xautoclaim(
            bridge.REPORT_STREAM, GROUP, self.name, self.claim_idle_ms, start_id="0-0",
            count=100)
        with self._lock:  # our own waiting reports are touched at every try; skip them anyway
            reports = [_report(entry_id, fields) for entry_id, fields in claimed
                       if _text(entry_id) not in self._held]
        if reports:
            log.info("claimed %d report(s) left pending by another reporter", len(reports))
        return reports

    def _retry_forever(self) -> None:
        """Hand each waiting report to the pool when its time comes (its own thread: the
        reader may be blocked in XREADGROUP)."""
        while not self.stopping.is_set():
            with self._lock:
                # Woken by a new waiting report too, which may be due sooner.
                self._lock.wait(self._waiting[0].at - time.monotonic() if self._waiting
                                else None)
                now, due = time.monotonic(), []
                while self._waiting and self._waiting[0].at <= now:
                    due.append(heapq.heappop(self._waiting).report)
            if due and not self.stopping.is_set():
                self._submit(due)

    def _submit(self, reports: list[Report]) -> None:
        for report in reports:
            with self._lock:
                self._busy += 1
                self._held.add(report.entry_id)
            self._pool.submit(self._make, report)

    # -- reporting -------------------------------------------------------------------

    def _client(self) -> ConductorClient:
        client = getattr(self._clients, "client", None)
        if client is None:  # one per thread: a requests.Session is not shared across threads
            client = self._clients.client = ConductorClient(self.conductor_url)
        return client

    def _make(self, report: Report) -> None:
        try:
            self._settle(report)
        except Exception:  # a thread must never die silently: the report stays pending
            log.exception("report %s could not be made; it stays pending", report.entry_id)
            with self._lock:  # claimed again once idle for claim_idle, by whichever reporter
                self._held.discard(report.entry_id)
        finally:
            with self._lock:
                self._busy -= 1
                self._lock.notify_all()

    def _settle(self, report: Report) -> None:
        fields = report.fields
        if not fields:  # not a report (logged when read): nothing to make
            self._ack(report)
            return
        task_id = fields["conductor_task_id"]
        try:
            if (report.marks < MARK_WAITS and not fields.get("check_state")
                    and not self.redis.exists(bridge.ANSWERED_KEY.format(task_id))):
                delay = min(MARK_RECHECK * 2**report.marks, HANDOFF_RECHECK_MAX)
                self._later(replace(report, marks=report.marks + 1), delay)
                return
            settle_now(fields["conductor_task_id"], fields["workflow_id"], fields["status"],
                       output=fields.get("output"), reason=fields.get("reason"),
                       celery_task_id=fields.get("celery_task_id"),
                       task_name=fields.get("task_name"),
                       check_state=bool(fields.get("check_state")),
                       pending_ok=report.waits >= HANDOFF_MAX_WAITS, client=self._client())
        except bridge.HandOffPending:
            delay = min(HANDOFF_RECHECK * 2**report.waits, HANDOFF_RECHECK_MAX)
            self._later(replace(report, waits=report.waits + 1), delay)
            return
        except (ConductorUnreachable, *bridge.UNREACHABLE) as exc:
            delay = min(MIN_RETRY_DELAY * 2**report.failures, MAX_RETRY_DELAY)
            log.warning("report of conductor task %s not made (%s); trying again in %.0fs",
                        fields["conductor_task_id"], streams.first_line(exc), delay)
            self._touch(report)
            self._later(replace(report, failures=report.failures + 1), delay)
            return
        except ConductorError as exc:  # refused: the same report cannot succeed later
            log.error("report of conductor task %s refused by Conductor, dropped (%s)",
                      fields["conductor_task_id"], streams.first_line(exc))
        self._ack(report)

    def _later(self, report: Report, delay: float) -> None:
        with self._lock:
            heapq.heappush(self._waiting, _Due(time.monotonic() + delay, report))
            self._lock.notify_all()

    def _touch(self, report: Report) -> None:
        """Claim the report again for this reporter: its idle time starts over, so that no
        other reporter takes it for abandoned while it waits here."""
        try:
            self.redis.xclaim(bridge.REPORT_STREAM, GROUP, self.name, 0, [report.entry_id],
                              justid=True)
        except redis.RedisError as exc:  # Redis away: the next try touches it again
            log.warning("report %s not touched (%s)", report.entry_id, streams.first_line(exc))

    def _ack(self, report: Report) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(bridge.REPORT_STREAM, GROUP, report.entry_id)
            pipe.xdel(bridge.REPORT_STREAM, report.entry_id)
            if report.fields:
                pipe.delete(bridge.ANSWERED_KEY.format(report.fields["conductor_task_id"]))
            pipe.execute()
            self.settled += 1
        except redis.RedisError as exc:  # made but still pending: made again, ignored then
            log.warning("report %s made but not acknowledged (%s)", report.entry_id,
                        streams.first_line(exc))
        with self._lock:
            self._held.discard(report.entry_id)


def _report(entry_id: str | bytes, fields: dict[Any, Any]) -> Report:
    raw = fields.get(bridge.REPORT_FIELD) or fields.get(bridge.REPORT_FIELD.encode())
    try:
        parsed = loads(raw if raw is not None else "")
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict) or not {"conductor_task_id", "workflow_id",
                                            "status"} <= parsed.keys():
        log.error("report stream entry %s is not a report, skipped: %r", entry_id, fields)
        parsed = {}
    return Report(_text(entry_id), parsed)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
