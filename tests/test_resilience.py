"""Nothing is lost when a worker process dies or Redis restarts (real processes)."""

from __future__ import annotations

import os
import signal
import time
import uuid

from celery import Celery

from tests.conftest import LOGS, celery_worker, k1_process
from tests.recovery.conftest import letters_of
from tests.support import VENV_BIN, RedisServer, free_port, wait_for


def test_a_task_whose_worker_process_is_killed_runs_again(services) -> None:
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


def test_a_redis_restart_loses_no_queued_task(services, tmp_path) -> None:
    redis_server = RedisServer(free_port(), tmp_path / "redis", LOGS).start()
    client = Celery("k1", broker=redis_server.url, backend=redis_server.url)
    client.conf.update(task_serializer="json", accept_content=["json"],
                       result_serializer="json")

    def worker_for(name: str, queue: str):
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


STORM_TASKS = 200  # a few hundred tasks, each with one transient failure: 400 attempts
STORM_KILLS = 15  # pool children SIGKILLed while those attempts run
STORM_SLEEP_MS = 60  # each attempt sleeps after its effect: a kill mid-run lands after it


def test_killed_pool_children_lose_no_task_and_repeat_no_effect(services) -> None:
    """The storm of issue 9: pool children SIGKILLed while tasks run, after their side
    effect and before their acknowledgement, so the messages run again. Counted by
    idempotency key: every task completes, and every attempt's effect happened once.
    """
    from k1.celery import app
    from k1.connections import get_redis
    from k1.tasks.demo import flaky

    storm = uuid.uuid4().hex[:8]
    counters = [f"k1:flaky:storm-{storm}-{i}" for i in range(STORM_TASKS)]
    client = get_redis()
    worker = celery_worker("storm", concurrency=2, queues="q-storm")
    started = time.monotonic()
    results = []
    try:
        results += [flaky.apply_async(kwargs={"project_id": "acme", "fail_times": 1,
                                             "sleep_ms": STORM_SLEEP_MS, "key": key[9:]},
                                     queue="q-storm") for key in counters]

        def attempts_counted() -> int:
            return sum(int(v or 0) for v in client.mget(counters))

        def running_pid() -> int | None:
            active = (app.control.inspect(destination=["storm@k1test"], timeout=1).active()
                      or {}).get("storm@k1test", [])
            return next((t["worker_pid"] for t in active if t["name"] == flaky.name), None)

        def kill_a_running_child() -> bool:
            pid = running_pid()
            if pid is None:
                return False
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # a child killed before, still listed: pick again
                return False
            return True

        step = 2 * STORM_TASKS // (STORM_KILLS + 1)  # spread the kills over the run
        for kill in range(1, STORM_KILLS + 1):
            wait_for(lambda kill=kill: attempts_counted() >= kill * step, timeout=60,
                     message=lambda kill=kill: f"attempts stalled at {attempts_counted()} "
                                               f"before kill {kill}; worker log:\n"
                                               f"{worker.log_tail()}")
            wait_for(kill_a_running_child, timeout=30, message="no storm task running to kill")

        wait_for(lambda: all(r.ready() for r in results), timeout=90,
                 message=lambda: f"{sum(not r.ready() for r in results)} of {STORM_TASKS} "
                                 f"tasks never finished; worker log:\n{worker.log_tail()}")
        elapsed = time.monotonic() - started
        lost = [r.id for r in results if r.state != "SUCCESS"]
        counts = client.mget(counters)
        pipe = client.pipeline()
        for key in counters:
            pipe.llen(f"{key}:runs")
        runs = pipe.execute()
        twice = [(key, count, logged, r.result, r.retries)
                 for key, count, logged, r in zip(counters, counts, runs, results, strict=True)
                 if (count, logged, r.result["runs"], r.retries) != ("2", 2, 2, 1)]
        print(f"storm: {STORM_TASKS} tasks, {STORM_KILLS} kills, {elapsed:.1f}s, "
              f"{len(lost)} lost, {len(twice)} with an effect repeated")
        assert worker.log_tail(2000).count("WorkerLostError") >= STORM_KILLS // 2
        assert not lost, f"{len(lost)} tasks lost: {lost[:5]}"
        assert not twice, f"{len(twice)} tasks repeated an effect (key, count, logged " \
                          f"runs, result, retries): {twice[:5]}"
    finally:
        worker.stop()
        results.clear()  # unsubscribe from their results now, not at interpreter exit
