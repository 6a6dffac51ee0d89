"""Redis restarted under load (AOF on): every process reconnects by itself and keeps working.

Celery users report workers that reconnect after a broker restart and then silently stop
consuming; so after the restart this scenario sends fresh work and requires it done, a
schedule to fire again, the web process to answer and a connected dashboard client to
receive the fresh tasks' events.

The platform runs a Conductor worker too (``k1 conductor-worker``, polling the session's
Conductor server). Profile workflows are in flight when Redis stops (their Celery tasks
queued behind the load), more are started while it is down (the worker polls them with
no Redis to hand them to) and more through the web process after the restart: every one
completes, and no Conductor task attempt fails for the outage (a failed attempt spends one
of the task's few retries, which a longer outage would exhaust: the workflow would fail).
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from k1.conductor.client import TERMINAL_WORKFLOW_STATUSES, ConductorClient
from tests.conductor.conftest import WORKFLOWS as WORKFLOW_FILES
from tests.conductor.conftest import conductor_server  # noqa: F401 - the session's server
from tests.conftest import API
from tests.events.sockets import Listener
from tests.fault.platform import Load, Outcome, Platform, report
from tests.recovery.conftest import letters_of
from tests.support import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

TASKS = 1000
DOWNTIME = 5.0  # s Redis stays down: the fault itself, not a wait for something
BEAT_ENV = {"K1_BEAT_MAX_LOOP_INTERVAL": "1", "K1_BEAT_LOCK_TIMEOUT": "5"}
WORKFLOWS = 4  # profile workflows started at each stage: before, during, after the fault
WORKFLOW_TIMEOUT = 300  # s for them all to end, behind the load and its recovery


def fires_after(platform: Platform, name: str, after: float) -> list[dict]:
    import json

    from k1.scheduling.entry import schedule_id
    from k1.scheduling.history import FIRE_LOG_KEY

    raw = platform.redis_client().lrange(FIRE_LOG_KEY.format(schedule_id("fault", name)), 0, -1)
    return [fire for fire in map(json.loads, raw) if fire["fired_at"] > after]


def start_workflows(conductor: ConductorClient, stage: str) -> list[str]:
    return [conductor.start_workflow("profile_workflow", {
        "project_id": "fault", "data_path": f"s3://k1/{stage}-{uuid.uuid4().hex[:8]}.csv"})
        for _ in range(WORKFLOWS)]


def polled(conductor: ConductorClient, workflow_ids: list[str]) -> bool:
    """Whether the Conductor worker has polled the first task of every workflow."""
    return all(any(task.get("pollCount", 0) > 0 for task in
                   conductor.get_workflow(w, include_tasks=True).get("tasks", []))
               for w in workflow_ids)


def wait_workflows(conductor: ConductorClient, workflow_ids: list[str],
                   timeout: float) -> dict[str, dict]:
    """Every workflow once all have ended (COMPLETED or not), with its tasks."""
    ended: dict[str, dict] = {}

    def all_ended() -> bool:
        for workflow_id in workflow_ids:
            if ended.get(workflow_id, {}).get("status") not in TERMINAL_WORKFLOW_STATUSES:
                ended[workflow_id] = conductor.get_workflow(workflow_id, include_tasks=True)
        return all(w.get("status") in TERMINAL_WORKFLOW_STATUSES for w in ended.values())

    wait_for(all_ended, timeout=timeout, interval=0.5,
             message=lambda: f"workflows still running: {describe(ended)}")
    return ended


def describe(workflows: dict[str, dict]) -> dict[str, str]:
    """workflow id -> its status and its tasks' (reference, status), for failure messages."""
    return {workflow_id: f"{w.get('status')} " + str([
        (t.get("referenceTaskName"), t.get("status")) for t in w.get("tasks", [])])
        for workflow_id, w in workflows.items()}


def test_a_redis_restart_under_load_loses_nothing_and_everything_resumes(
        services, tmp_path, make_token, unique, external_service,
        conductor_server) -> None:  # noqa: F811
    # A message a worker held when the connection broke comes back after this timeout.
    env = {"K1_VISIBILITY_TIMEOUT": "60", "CONDUCTOR_SERVER_URL": conductor_server.api_url,
           "K1_WORKFLOWS_DIR": str(WORKFLOW_FILES)}
    conductor = ConductorClient(conductor_server.api_url)
    with Platform("redis-restart", tmp_path, env=env) as platform:
        worker = platform.worker("consumer", concurrency=2)
        platform.process("beat", str(platform_bin("k1")), "beat", env=BEAT_ENV)
        _, url = platform.web()
        poller = platform.conductor_worker()
        operator = API(url, make_token("root", "*"))
        schedule = f"fault-{unique}"
        created = operator.post("/api/scheduler/jobs", json={
            "name": schedule, "task": "k1.tasks.demo.flaky", "every": 1,
            "project_id": "fault"})
        assert created.status_code == 201, created.text
        with Listener(url, make_token("watcher", "fault")) as watcher:
            assert watcher.subscribe("fault")["ok"]
            load = Load(platform, "fault", TASKS, fail_times=1, sleep_ms=5)
            load.send(TASKS // 2)
            wait_for(lambda: load.completed() >= TASKS // 10, timeout=300, interval=0.2,
                     message=lambda: f"the load never got going: {load.summary()}")
            # The rest of the load, then workflows whose Celery tasks queue behind it (one
            # project, one queue: first in, first out), so that they are still running
            # when Redis stops right after the worker has polled them.
            load.send()
            before = start_workflows(conductor, "before")
            wait_for(lambda: polled(conductor, before), timeout=60,
                     message="the conductor worker never polled the first workflows")
            in_flight = sum(conductor.get_workflow(w)["status"] == "RUNNING" for w in before)
            platform.redis.stop()
            stopped = time.monotonic()
            # Polled while Redis is down: the worker has nowhere to hand them.
            during = start_workflows(conductor, "during")
            wait_for(lambda: polled(conductor, during), timeout=60,
                     message="the conductor worker never polled the workflows started "
                     "while Redis was down")
            time.sleep(max(0.0, DOWNTIME - (time.monotonic() - stopped)))
            down_for = time.monotonic() - stopped  # more than DOWNTIME if the polls were slow
            platform.redis.start()
            restarted = time.monotonic()
            restarted_wall = time.time()

            done = load.wait_done(timeout=300)
            # Fresh work after the restart: consumed, announced to the dashboard client;
            # workflows started through the web, polled and handed over by the worker.
            fresh = Load(platform, "fault", 200)
            fresh_ids = set(fresh.send())
            after = []
            for i in range(WORKFLOWS):
                started = operator.post("/api/workflows/profile_workflow/start", json={
                    "project_id": "fault", "input": {"data_path": f"s3://k1/after-{i}.csv"}})
                assert started.status_code == 201, started.text
                after.append(started.json()["workflow_id"])
            fresh.wait_done(timeout=120)
            fresh_done = time.monotonic()
            workflows = wait_workflows(conductor, before + during + after, WORKFLOW_TIMEOUT)
            workflows_done = time.monotonic()
            watcher.wait_for(lambda r: r.name == "task_event" and r.data.get("task_id")
                             in fresh_ids and r.data.get("type") == "succeeded",
                             timeout=60, what="an event of a task sent after the restart")
            events_back = time.monotonic()
        wait_for(lambda: fires_after(platform, schedule, restarted_wall), timeout=30,
                 message="beat never fired again after the restart")
        beat_back = time.monotonic()
        assert requests.get(f"{url}/api/health", timeout=5).status_code == 200
        assert worker.alive(), worker.log_tail()
        assert poller.alive(), poller.log_tail()
        completed = [w for w, run in workflows.items() if run["status"] == "COMPLETED"]
        # Each workflow has two tasks; a third is a retry Conductor scheduled after a
        # failed attempt.
        failed_attempts = {w: [t["referenceTaskName"] for t in run["tasks"]
                               if t["status"] != "COMPLETED"]
                           for w, run in workflows.items()}
        failed_attempts = {w: refs for w, refs in failed_attempts.items() if refs}
        outcome = report(Outcome(
            scenario="redis-restart", load=f"{TASKS} flaky tasks, 1 transient failure each, "
            "5 ms of work, prefork 2; a schedule every 1 s; a Socket.IO client; "
            f"{3 * WORKFLOWS} profile workflows through a Conductor worker ({WORKFLOWS} each "
            "started before, during and after the fault)",
            fault=f"Redis (AOF, fsync always) stopped for {down_for:.0f}s mid-load, restarted",
            sent=TASKS, completed=load.completed(), lost=TASKS - load.completed(),
            dead=sum(len(letters_of(t)) for t in load.task_ids.values()),
            duplicated_effects=sum(n > 2 for n in load.effects().values()),
            recovery_s=round(done - restarted, 2),
            extra={"fresh_tasks_done_s": round(fresh_done - restarted, 2),
                   "dashboard_events_back_s": round(events_back - restarted, 2),
                   "beat_fires_again_s": round(beat_back - restarted, 2),
                   "workflows_sent": len(workflows),
                   "workflows_in_flight_at_the_fault": in_flight + len(during),
                   "workflows_completed": len(completed),
                   "workflows_done_s": round(workflows_done - restarted, 2),
                   "conductor_attempts_failed": sum(map(len, failed_attempts.values()))}))
        assert outcome.lost == 0 and outcome.dead == 0
        assert outcome.duplicated_effects == 0
        assert in_flight > 0, "every workflow started before the fault had already ended"
        assert len(completed) == len(workflows), describe(workflows)
        assert not failed_attempts, f"Conductor task attempts failed: {describe(workflows)}"


def platform_bin(name: str):
    from tests.support import VENV_BIN

    return VENV_BIN / name
