"""Redis restarted under load (AOF on): every process reconnects by itself and keeps working.

Celery users report workers that reconnect after a broker restart and then silently stop
consuming; so after the restart this scenario sends fresh work and requires it done, a
schedule to fire again, the web process to answer and a connected dashboard client to
receive the fresh tasks' events.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.conftest import API
from tests.events.sockets import Listener
from tests.fault.platform import Load, Outcome, Platform, report
from tests.recovery.conftest import letters_of
from tests.support import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

TASKS = 1000
DOWNTIME = 5.0  # s Redis stays down: the fault itself, not a wait for something
BEAT_ENV = {"K1_BEAT_MAX_LOOP_INTERVAL": "1", "K1_BEAT_LOCK_TIMEOUT": "5"}


def fires_after(platform: Platform, name: str, after: float) -> list[dict]:
    import json

    from k1.scheduling.entry import schedule_id
    from k1.scheduling.history import FIRE_LOG_KEY

    raw = platform.redis_client().lrange(FIRE_LOG_KEY.format(schedule_id("fault", name)), 0, -1)
    return [fire for fire in map(json.loads, raw) if fire["fired_at"] > after]


def test_a_redis_restart_under_load_loses_nothing_and_everything_resumes(  # type: ignore[no-untyped-def]
        services, tmp_path, make_token, unique) -> None:
    # A message a worker held when the connection broke comes back after this timeout.
    with Platform("redis-restart", tmp_path, env={"K1_VISIBILITY_TIMEOUT": "60"}) as platform:
        worker = platform.worker("consumer", concurrency=2)
        platform.process("beat", str(platform_bin("k1")), "beat", env=BEAT_ENV)
        _, url = platform.web()
        operator = API(url, make_token("root", "*"))
        schedule = f"fault-{unique}"
        created = operator.post("/api/scheduler/jobs", json={
            "name": schedule, "task": "k1.tasks.demo.flaky", "every": 1,
            "project_id": "fault"})
        assert created.status_code == 201, created.text
        with Listener(url, make_token("watcher", "fault")) as watcher:
            assert watcher.subscribe("fault")["ok"]
            load = Load(platform, "fault", TASKS, fail_times=1, sleep_ms=5)
            load.send()
            wait_for(lambda: load.completed() >= TASKS // 10, timeout=300, interval=0.2,
                     message=lambda: f"the load never got going: {load.summary()}")
            platform.redis.stop()
            time.sleep(DOWNTIME)
            platform.redis.start()
            restarted = time.monotonic()
            restarted_wall = time.time()

            done = load.wait_done(timeout=300)
            # Fresh work after the restart: consumed, announced to the dashboard client.
            fresh = Load(platform, "fault", 200)
            fresh_ids = set(fresh.send())
            fresh.wait_done(timeout=120)
            fresh_done = time.monotonic()
            watcher.wait_for(lambda r: r.name == "task_event" and r.data.get("task_id")
                             in fresh_ids and r.data.get("type") == "succeeded",
                             timeout=60, what="an event of a task sent after the restart")
            events_back = time.monotonic()
        wait_for(lambda: fires_after(platform, schedule, restarted_wall), timeout=30,
                 message="beat never fired again after the restart")
        beat_back = time.monotonic()
        assert requests.get(f"{url}/api/health", timeout=5).status_code == 200
        assert worker.alive(), worker.log_tail()
        outcome = report(Outcome(
            scenario="redis-restart", load=f"{TASKS} flaky tasks, 1 transient failure each, "
            "5 ms of work, prefork 2; a schedule every 1 s; a Socket.IO client",
            fault=f"Redis (AOF, fsync always) stopped for {DOWNTIME:.0f}s mid-load, restarted",
            sent=TASKS, completed=load.completed(), lost=TASKS - load.completed(),
            dead=sum(len(letters_of(t)) for t in load.task_ids.values()),
            duplicated_effects=sum(n > 2 for n in load.effects().values()),
            recovery_s=round(done - restarted, 2),
            extra={"fresh_tasks_done_s": round(fresh_done - restarted, 2),
                   "dashboard_events_back_s": round(events_back - restarted, 2),
                   "beat_fires_again_s": round(beat_back - restarted, 2)}))
        assert outcome.lost == 0 and outcome.dead == 0
        assert outcome.duplicated_effects == 0


def platform_bin(name: str):  # type: ignore[no-untyped-def]
    from tests.support import VENV_BIN

    return VENV_BIN / name
