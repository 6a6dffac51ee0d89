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

The same process reports the Celery outcomes to Conductor: a :class:`~.reports.Reporter`
(threads in this parent process, not in the poller) reads the report stream the bridge's
signal handlers write to.

Stopping (SIGTERM to the process or its whole group, as a Procfile host sends it; or
SIGINT): the poller stops taking work, hands every task it has already polled to Celery
(milliseconds each) and reports it IN_PROGRESS, then exits; the reporter finishes the
reports it is making (reports still waiting stay in the stream for the next reporter);
the whole process is gone well within a platform's 30 s grace. No polled task is left to
wait for Conductor's ``responseTimeoutSeconds``.
"""

import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from conductor.client.automator.task_runner import TaskRunner
from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from conductor.client.worker.worker import Worker

from k1.celery import serve_requests
from k1.conductor.bridge import (
    CALLBACK_AFTER_SECONDS,
    Answer,
    ConductorTask,
    hand_off,
    mark_answered,
)
from k1.conductor.client import ConductorClient
from k1.conductor.reports import Reporter
from k1.connections import get_redis
from k1.logs import configure_logging
from k1.settings import get_settings

log = logging.getLogger("k1.conductor.worker")

# This process (and each poller it spawns, which imports this module to unpickle
# :func:`execute`) sends tasks and reads their state but never waits for a result: no
# result subscription per hand-off. Celery's stock backend subscribes before it publishes,
# so a Redis outage failed there and the task was never sent (its claim then answered
# PENDING to every callback poll); it also gave up for good after its 20 reconnections.
serve_requests()

POLL_INTERVAL_MS = 100  # an idle poller asks at most this often per task type
THREADS = 4  # hand-offs in flight per poller: each is a Redis SET and a broker publish
REPORTER_STOP_GRACE = 5.0  # s for the reporter's reader to notice a stop (it blocks 0.5 s)
HEALTH_CHECK_INTERVAL = 2.0  # s between the parent's looks at Conductor's health
# A stopping poller only finishes hand-offs (ms each); kill it after this, well within the
# 30 s a Procfile host allows between SIGTERM and SIGKILL.
STOP_GRACE = 20.0
STOP_CHECK_INTERVAL = 0.01  # s between a stopping poller's looks at its hand-offs


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


class _MarkingClient:
    """conductor-python's task client, marking each IN_PROGRESS answer that Conductor has
    accepted (:func:`~k1.conductor.bridge.mark_answered`): the report of a task that
    finished before the answer landed waits for the mark, not for a look at Conductor.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def update_task_v2(self, body: TaskResult, **options: Any) -> Any:
        answer = self._client.update_task_v2(body=body, **options)
        _landed(body)
        return answer

    def update_task(self, body: TaskResult, **options: Any) -> Any:
        answer = self._client.update_task(body=body, **options)
        _landed(body)
        return answer


def _landed(result: TaskResult) -> None:
    if result.status == TaskResultStatus.IN_PROGRESS:
        mark_answered(result.task_id)


class _Runner(TaskRunner):
    """conductor-python's task runner, stopped without dropping a task it has polled.

    The SDK's own stop drops work: a task its v2 update answered with, or one polled just
    before the stop flag is set, is never executed and waits in Conductor for the task
    definition's ``responseTimeoutSeconds``. Here a stop only stops *taking* work; every
    task already polled is handed off (a Redis SET and a broker publish, milliseconds)
    and reported before the runner's loop ends.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sdk_client: Any = vars(self)["task_client"]  # set by the SDK's __init__, untyped
        self.task_client = _MarkingClient(sdk_client)

    def stop_polling(self) -> None:
        self.worker.paused = True  # the SDK's batch poll returns nothing while paused
        self._use_update_v2 = False  # a v2 update would answer with the next task

    def run_once(self) -> None:
        if not self.worker.paused:
            super().run_once()
        elif all(future.done() for future in self._running_tasks):
            self.stop()  # run() returns; nothing is left to cancel
        else:
            time.sleep(STOP_CHECK_INTERVAL)


def _poll(task_types: Sequence[str], url: str, poll_interval_ms: int, threads: int) -> None:
    """The poller process: one runner over every K1 task type, until SIGTERM."""
    configure_logging(get_settings().log_level)
    worker = Worker(task_definition_name=list(task_types), execute_function=execute,
                    poll_interval=poll_interval_ms, thread_count=threads,
                    worker_id="k1-bridge")
    runner = _Runner(worker, Configuration(server_api_url=url))
    signal.signal(signal.SIGTERM, lambda signum, frame: runner.stop_polling())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    runner.run()


def serve(task_types: Sequence[str], *, poll_interval_ms: int = POLL_INTERVAL_MS,
          threads: int = THREADS) -> int:
    """Run the poller until SIGTERM/SIGINT; returns the exit status."""
    settings = get_settings()
    configure_logging(settings.log_level)
    url = settings.conductor_server_url
    if not url:
        log.error("CONDUCTOR_SERVER_URL is not set; nothing to poll")
        return 2
    if not task_types:
        log.error("no K1 task types to serve")
        return 2
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %s: stopping the Conductor poller", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    client = ConductorClient(url)
    # conductor-python needs ``spawn``; its import set it as the default already.
    context = multiprocessing.get_context("spawn")

    def start() -> BaseProcess:
        process = context.Process(target=_poll, name="k1-conductor-poller",
                                  args=(list(task_types), url, poll_interval_ms, threads))
        process.start()
        return process

    # The reports run in this process, beside the poller's: the hand-offs and the reports
    # each have a core's worth of Python, and a poller restart does not stop the reports.
    reporter = Reporter(get_redis(), conductor_url=url).start()
    poller = start()
    log.info("conductor worker polling %s at %s", ", ".join(task_types), url)
    was_healthy = True
    try:
        while not stop.wait(HEALTH_CHECK_INTERVAL):
            healthy = client.healthy()
            if healthy and not was_healthy:
                # conductor-python backs its poller off for up to 2 min after failed
                # polls; a fresh poller polls at once.
                log.info("Conductor is back; restarting the poller")
                _stop(poller)
                poller = start()
            elif not poller.is_alive():
                log.warning("the poller exited (%s); starting another", poller.exitcode)
                poller = start()
            was_healthy = healthy
    finally:
        _stop(poller)
        reporter.stop(REPORTER_STOP_GRACE)
    log.info("conductor worker stopped")
    return 0


def _stop(poller: BaseProcess) -> None:
    """SIGTERM (the poller finishes its hand-offs and exits), SIGKILL after STOP_GRACE."""
    if poller.is_alive():
        poller.terminate()
        poller.join(STOP_GRACE)
    if poller.is_alive():
        log.warning("the poller did not stop within %.0f s; killing it", STOP_GRACE)
        poller.kill()
        poller.join()
