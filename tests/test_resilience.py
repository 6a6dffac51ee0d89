"""Nothing is lost when a worker process dies or Redis restarts (real processes)."""

from __future__ import annotations

import os
import signal

from celery import Celery

from tests.conftest import LOGS, celery_worker, k1_process
from tests.recovery.conftest import letters_of
from tests.support import VENV_BIN, RedisServer, free_port, wait_for


def test_a_task_whose_worker_process_is_killed_runs_again(services) -> None:  # type: ignore[no-untyped-def]
    from k1.celery import app
    from k1.tasks.demo import flaky

    worker = celery_worker("crash", concurrency=1, queues="q-crash")
    try:
        result = flaky.apply_async(kwargs={"project_id": "acme", "sleep_ms": 4000},
                                   queue="q-crash")

        def running_pid() -> int | None:
            active = (app.control.inspect(destination=["crash@k1test"], timeout=1).active()
                      or {}).get("crash@k1test", [])
            found = [t["worker_pid"] for t in active if t["id"] == result.id]
            return found[0] if found else None

        pid = wait_for(running_pid, timeout=30, message="the task never started")
        os.kill(pid, signal.SIGKILL)  # the pool process dies mid-task
        # acks_late + reject_on_worker_lost: the message goes back and runs again.
        assert result.get(timeout=60)["project_id"] == "acme"
        assert "WorkerLostError" in worker.log_tail(200)
        assert letters_of(result.id) == []
    finally:
        worker.stop()


def test_a_redis_restart_loses_no_queued_task(services, tmp_path) -> None:  # type: ignore[no-untyped-def]
    redis_server = RedisServer(free_port(), tmp_path / "redis", LOGS).start()
    client = Celery("k1", broker=redis_server.url, backend=redis_server.url)
    client.conf.update(task_serializer="json", accept_content=["json"],
                       result_serializer="json")

    def worker_for(name: str, queue: str):  # type: ignore[no-untyped-def]
        process = k1_process(
            name, str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--concurrency", "1",
            "--hostname", f"{name}@k1test", "--queues", queue, "--without-mingle",
            "--without-gossip", env={"REDIS_URL": redis_server.url}).start()
        process.wait_until(lambda: client.control.ping(destination=[f"{name}@k1test"],
                                                       timeout=0.5), 60, "did not answer ping")
        return process

    now = worker_for("restart-now", "q-now")
    later = None
    try:
        waiting = client.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "acme"},
                                   queue="q-later")  # nobody consumes q-later yet
        redis_server.stop()
        redis_server.start()
        # The running worker reconnects by itself and takes new work.
        fresh = client.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "acme"},
                                 queue="q-now")
        assert fresh.get(timeout=90)["runs"] == 1, now.log_tail()
        # The task queued before the restart is still there for a worker to run.
        later = worker_for("restart-later", "q-later")
        assert waiting.get(timeout=60)["project_id"] == "acme"
    finally:
        now.stop()
        if later:
            later.stop()
        redis_server.stop()
