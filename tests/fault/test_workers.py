"""Workers die under load: pool children SIGKILLed again and again, a whole node SIGKILLed.

acks_late with reject_on_worker_lost gives a killed child's message back at once; the
messages a killed node held come back when the broker's visibility timeout passes. Either
way no task is lost, none dies for it, and no side effect happens twice.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.fault.platform import Load, Outcome, Platform, kill_quietly, pool_children, report
from tests.recovery.conftest import letters_of

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

KILL_TASKS = 1500  # tasks in the storm, each with one transient failure (two runs)
KILL_EVERY = 0.25  # s between two SIGKILLs of a pool child
KILL_FOR = 20.0  # s of kills
NODE_VISIBILITY = 60  # s: K1_VISIBILITY_TIMEOUT of the node scenario (its lowest value)


def dead_letters(load: Load) -> int:
    return sum(len(letters_of(task_id)) for task_id in load.task_ids.values())


def duplicated(load: Load, expected: int) -> int:
    return sum(count > expected for count in load.effects().values())


def test_pool_children_killed_again_and_again_lose_nothing(services, tmp_path) -> None:
    with Platform("kill-children", tmp_path) as platform:
        worker = platform.worker("storm", concurrency=2)
        load = Load(platform, "fault", KILL_TASKS, fail_times=1, sleep_ms=20)
        load.send()
        kills, started = 0, time.monotonic()
        while time.monotonic() - started < KILL_FOR and load.completed() < KILL_TASKS:
            children = pool_children(worker)
            if children and kill_quietly(random.choice(children)):
                kills += 1
            time.sleep(KILL_EVERY)
        last_kill = time.monotonic()
        done = load.wait_done(timeout=240)
        assert worker.alive(), worker.log_tail()
        assert kills >= 10, f"only {kills} kills landed: the storm did not happen"
        outcome = report(Outcome(
            scenario="pool-children-sigkilled", load=f"{KILL_TASKS} flaky tasks, 1 transient "
            "failure each, 20 ms of work, prefork 2", fault=f"{kills} SIGKILLs of pool "
            f"children, one every {KILL_EVERY}s for {KILL_FOR:.0f}s",
            sent=KILL_TASKS, completed=load.completed(), lost=KILL_TASKS - load.completed(),
            dead=dead_letters(load), duplicated_effects=duplicated(load, expected=2),
            recovery_s=round(done - last_kill, 2),
            extra={"worker_lost": worker.log_tail(100_000).count("WorkerLostError")}))
        assert outcome.lost == 0 and outcome.dead == 0
        assert outcome.duplicated_effects == 0


def test_a_whole_worker_node_killed_loses_nothing(services, tmp_path) -> None:
    env = {"K1_VISIBILITY_TIMEOUT": str(NODE_VISIBILITY)}
    with Platform("kill-node", tmp_path, env=env) as platform:
        doomed = platform.worker("doomed", concurrency=2)
        survivor = platform.worker("survivor", concurrency=2)
        load = Load(platform, "fault", 1000, fail_times=1, sleep_ms=20)
        load.send()
        platform.redis_client()  # fail here, not in the loop, if Redis is away
        wait_started = time.monotonic()
        while load.completed() < 100 and time.monotonic() - wait_started < 60:
            time.sleep(0.2)
        doomed.kill()  # SIGKILL to the whole process group: main process and pool at once
        killed_at = time.monotonic()
        unacked = platform.redis_client().hlen("unacked")  # held by either node right now
        done = load.wait_done(timeout=NODE_VISIBILITY + 180)
        assert survivor.alive(), survivor.log_tail()
        outcome = report(Outcome(
            scenario="worker-node-sigkilled", load="1000 flaky tasks, 1 transient failure "
            "each, 20 ms of work, two prefork-2 nodes", fault="one node SIGKILLed (process "
            f"group) mid-load; K1_VISIBILITY_TIMEOUT={NODE_VISIBILITY}",
            sent=1000, completed=load.completed(), lost=1000 - load.completed(),
            dead=dead_letters(load), duplicated_effects=duplicated(load, expected=2),
            recovery_s=round(done - killed_at, 2), extra={"unacked_at_kill": unacked}))
        assert outcome.lost == 0 and outcome.dead == 0
        assert outcome.duplicated_effects == 0
