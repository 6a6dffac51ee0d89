"""The Conductor server down while many workflows run: every one completes once it is back.

At small scale tests/conductor/test_bridge.py proves one workflow; here a few dozen are in
flight at every step (handed to Celery, reported, waiting to be scheduled) when the server
stops.
"""

from __future__ import annotations

import time

import pytest

from k1.conductor.client import ConductorClient
from tests.conductor.conftest import wait_for_workflow
from tests.fault.platform import Outcome, report
from tests.support import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

WORKFLOWS = 30
DOWNTIME = 10.0  # s the server stays down, at least (the fault itself)


def test_conductor_down_mid_workflow_every_workflow_completes(
        bridge, conductor_server, conductor: ConductorClient, external_service: str,
        unique: str) -> None:
    started = [conductor.start_workflow("profile_workflow", {
        "project_id": "acme", "data_path": f"s3://k1/{unique}-{i}.csv"})
        for i in range(WORKFLOWS)]

    def completed() -> int:
        return sum(conductor.get_workflow(w).get("status") == "COMPLETED" for w in started)

    wait_for(lambda: any(t["status"] in ("SCHEDULED", "IN_PROGRESS", "COMPLETED")
                         for w in started[-5:]
                         for t in conductor.get_workflow(w, include_tasks=True)["tasks"]),
             timeout=120, message="the last workflows never got going")
    done_before = completed()
    conductor_server.stop()
    stopped = time.monotonic()
    time.sleep(DOWNTIME)
    conductor_server.start()
    back = time.monotonic()
    for workflow_id in started:
        wait_for_workflow(conductor, workflow_id, "COMPLETED", timeout=300)
    recovered = time.monotonic()
    outcome = report(Outcome(
        scenario="conductor-down", load=f"{WORKFLOWS} profile workflows (analyze → render) "
        "through the bridge, prefork 2", fault=f"the Conductor server stopped for "
        f"{back - stopped:.0f}s (restart included) with {WORKFLOWS - done_before} in flight",
        sent=WORKFLOWS, completed=completed(), lost=WORKFLOWS - completed(), dead=0,
        duplicated_effects=None, recovery_s=round(recovered - back, 2),
        extra={"completed_before_the_fault": done_before}))
    assert outcome.lost == 0
