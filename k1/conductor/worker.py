"""The ``conductor`` process: conductor-python workers that hand K1 tasks to Celery.

    k1 conductor-worker                       # every SIMPLE task type in workflows/*.json
    k1 conductor-worker --task-type k1.tasks.analyze_profile

Imports conductor-python, whose task handler switches multiprocessing to ``spawn`` on
import: only the ``conductor`` process may import this module (the CLI imports it inside
the command). One worker polls all K1 task types in turn; its function, :func:`execute`,
is module-level so the spawned poller process can unpickle it. The worker is stateless:
what it must remember (which Celery task runs which Conductor task) is in Redis.

After a Conductor outage the pollers are restarted as soon as the server is healthy
again, instead of waiting out conductor-python's poll backoff (up to 2 minutes).

Stopping: SIGTERM or SIGINT stops polling; a task being handed off finishes its hand-off
(a few milliseconds) before the poller exits, so nothing is claimed without being sent.
"""

import logging
import multiprocessing
import signal
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from conductor.client.worker.worker import Worker

from k1.conductor.bridge import CALLBACK_AFTER_SECONDS, Answer, ConductorTask, hand_off
from k1.conductor.client import ConductorClient
from k1.logs import configure_logging
from k1.settings import get_settings

log = logging.getLogger("k1.conductor.worker")

POLL_INTERVAL_MS = 100  # an idle poller asks at most this often per task type
THREADS = 4  # hand-offs in flight per poller: each is a Redis SET and a broker publish
HEALTH_CHECK_INTERVAL = 2.0  # s between the parent's looks at Conductor's health


def execute(task: Task) -> TaskResult:
    """Answer one poll of a K1 task: hand it to Celery, or report its Celery state."""
    answer = hand_off(ConductorTask(
        task_id=task.task_id, workflow_id=task.workflow_instance_id,
        task_type=task.task_def_name or task.task_type, input=dict(task.input_data or {}),
        workflow_name=task.workflow_type,
    ), callback_after=CALLBACK_AFTER_SECONDS)
    return to_task_result(task, answer)


def to_task_result(task: Task, answer: Answer) -> TaskResult:
    result = TaskResult(task_id=task.task_id, workflow_instance_id=task.workflow_instance_id,
                        worker_id=f"k1-bridge@{multiprocessing.current_process().name}")
    result.status = getattr(TaskResultStatus, answer.status)
    result.output_data = answer.output
    if answer.reason:
        result.reason_for_incompletion = answer.reason
    if answer.callback_after_seconds is not None:
        result.callback_after_seconds = answer.callback_after_seconds
    return result


def _stop_after_hand_offs(signum: int, frame: FrameType | None) -> None:
    # Raised in the poller's main thread: the SDK's runner then shuts its thread pool
    # down with wait=True, so hand-offs in flight complete before the process exits.
    raise SystemExit(0)


if multiprocessing.parent_process() is not None:  # a spawned poller, not the parent
    configure_logging(get_settings().log_level)
    signal.signal(signal.SIGTERM, _stop_after_hand_offs)


def serve(task_types: Sequence[str], *, poll_interval_ms: int = POLL_INTERVAL_MS,
          threads: int = THREADS) -> int:
    """Run the pollers until SIGTERM/SIGINT; returns the exit status."""
    settings = get_settings()
    configure_logging(settings.log_level)
    if not settings.conductor_server_url:
        log.error("CONDUCTOR_SERVER_URL is not set; nothing to poll")
        return 2
    if not task_types:
        log.error("no K1 task types to serve")
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping the Conductor pollers", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    client = ConductorClient(settings.conductor_server_url)
    handler = _start_pollers(task_types, settings.conductor_server_url, poll_interval_ms,
                             threads)
    log.info("conductor worker polling %s at %s", ", ".join(task_types),
             settings.conductor_server_url)
    was_healthy = True
    try:
        while not stop.wait(HEALTH_CHECK_INTERVAL):
            healthy = client.healthy()
            if healthy and not was_healthy:
                # conductor-python backs its pollers off for up to 2 min after failed
                # polls; fresh pollers start polling at once.
                log.info("Conductor is back; restarting the pollers")
                handler.stop_processes()
                handler = _start_pollers(task_types, settings.conductor_server_url,
                                         poll_interval_ms, threads)
            was_healthy = healthy
    finally:
        # SIGTERM to each poller (see _stop_after_hand_offs), a kill after 5 s.
        handler.stop_processes()
    log.info("conductor worker stopped")
    return 0


def _start_pollers(task_types: Sequence[str], url: str, poll_interval_ms: int,
                   threads: int) -> Any:
    from conductor.client.automator.task_handler import TaskHandler  # sets spawn

    worker = Worker(task_definition_name=list(task_types), execute_function=execute,
                    poll_interval=poll_interval_ms, thread_count=threads,
                    worker_id="k1-bridge")
    handler = TaskHandler(workers=[worker], configuration=Configuration(server_api_url=url),
                          scan_for_annotated_workers=False, monitor_processes=True)
    handler.start_processes()
    return handler
