"""The active beat SIGKILLed while many schedules fire: the standby takes over, and no due
time is ever fired twice; the due times that passed during the handover are fired once,
as one catch-up fire (``catch_up: once``), never once each.
"""

from __future__ import annotations

import itertools
import json
import time

import pytest

from k1.scheduling.entry import schedule_id
from k1.scheduling.history import FIRE_LOG_KEY
from tests.conftest import API
from tests.fault.platform import Outcome, Platform, report
from tests.support import VENV_BIN, Process, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

SCHEDULES = 40
EVERY = 2  # s
LOCK_TIMEOUT = 5  # s
BEAT_ENV = {"K1_BEAT_MAX_LOOP_INTERVAL": "1", "K1_BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT)}
ACQUIRED = "beat: Acquired lock"


def acquired(process: Process) -> int:
    try:
        return process.log_path.read_text(errors="replace").count(ACQUIRED)
    except FileNotFoundError:
        return 0


def test_killing_the_active_beat_fires_each_due_time_once(services, tmp_path, make_token,
                                                          unique) -> None:
    with Platform("beat-kill", tmp_path) as platform:
        _, web = platform.web()
        operator = API(web, make_token("root", "*"))
        names = [f"fault-{unique}-{i}" for i in range(SCHEDULES)]
        for name in names:
            created = operator.post("/api/scheduler/jobs", json={
                "name": name, "task": "k1.tasks.demo.flaky", "every": EVERY,
                "project_id": "fault"})
            assert created.status_code == 201, created.text
        active = platform.process("beat-a", str(VENV_BIN / "k1"), "beat", env=BEAT_ENV)
        active.wait_until(lambda: acquired(active), 60, "never acquired the beat lock")
        standby = platform.process("beat-b", str(VENV_BIN / "k1"), "beat", env=BEAT_ENV)
        client = platform.redis_client()

        def fires() -> dict[str, list[dict]]:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.lrange(FIRE_LOG_KEY.format(schedule_id("fault", name)), 0, -1)
            return {name: [json.loads(f) for f in raw]
                    for name, raw in zip(names, pipe.execute(), strict=True)}

        wait_for(lambda: all(len(f) >= 2 for f in fires().values()), timeout=60,
                 message="the schedules never fired twice under the first beat")
        active.kill()
        killed_at = time.time()
        standby.wait_until(lambda: acquired(standby), LOCK_TIMEOUT + 60,
                           "the standby never took over")
        took_over = time.time()
        wait_for(lambda: all(any(f["fired_at"] > took_over + EVERY for f in fs)
                             for fs in fires().values()),
                 timeout=60, message="not every schedule fired under the standby")
        standby.stop()

        history = {name: sorted(fs, key=lambda f: f["due_at"]) for name, fs in fires().items()}
        # Between two fires of a schedule, the later one serves every due time in between
        # (due_count): a gap it does not cover is a lost fire, a repeated due time a double.
        lost = duplicated = 0
        for fs in history.values():
            for prev, cur in itertools.pairwise(fs):
                periods = round((cur["due_at"] - prev["due_at"]) / EVERY)
                lost += max(0, periods - cur["due_count"])
                duplicated += periods == 0 or max(0, cur["due_count"] - periods)
        caught_up = sum(f["due_count"] - 1 for fs in history.values() for f in fs)
        first_after = [min(f["fired_at"] for f in fs if f["fired_at"] > killed_at)
                       for fs in history.values()]
        fired = sum(len(fs) for fs in history.values())
        outcome = report(Outcome(
            scenario="active-beat-sigkilled", load=f"{SCHEDULES} schedules every {EVERY}s, "
            "two beats", fault=f"the active beat SIGKILLed; lock timeout {LOCK_TIMEOUT}s",
            sent=fired, completed=fired, lost=lost, dead=0, duplicated_effects=duplicated,
            recovery_s=round(max(first_after) - killed_at, 2),
            extra={"due_times_served_by_a_catch_up_fire": caught_up,
                   "takeover_s": round(took_over - killed_at, 2)}))
        assert outcome.lost == 0 and outcome.duplicated_effects == 0
