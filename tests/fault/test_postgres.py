"""PostgreSQL down for a minute while tasks die: their letters wait in the Redis spool and
are all written, once each, when the database is back; meanwhile the API answers 503 for
what needs the database and keeps serving the rest.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
import requests
from sqlalchemy import create_engine, func, select

from tests.conftest import API, BASE, LOGS
from tests.fault.platform import Load, Outcome, Platform, report
from tests.support import VENV_BIN, PostgresServer, free_port, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.slow, pytest.mark.timeout(900)]

LETTERS = 300  # tasks that die for good while the database is down
# Of them, letters PostgreSQL refuses as they are (a NUL byte, a lone surrogate in their
# arguments): they must be stored repaired or quarantined, never block the others.
HOSTILE = 50
HOSTILE_TAG = "bad\u0000\ud800"
DOWNTIME = 60.0  # s the database stays down, at least (the fault itself)


def test_postgres_down_for_a_minute_loses_no_dead_letter(services, tmp_path, make_token) -> None:
    # Under the session's folder: PostgreSQL runs as its own user and must reach it.
    database = PostgresServer(free_port(), BASE / f"pg-{uuid.uuid4().hex[:8]}" / "data",
                              LOGS).start()
    url = database.url.replace("postgresql://", "postgresql+psycopg://")
    env = {"DATABASE_URL": database.url}
    try:
        with Platform("postgres-down", tmp_path, env=env) as platform:
            subprocess.run([str(VENV_BIN / "k1"), "db", "upgrade"], check=True,
                           env={**os.environ, **platform.env}, capture_output=True)
            platform.worker("dlq", concurrency=2)
            _, web = platform.web()
            api = API(web, make_token("ada", "fault"))
            operator = API(web, make_token("root", "*"))

            database.stop()
            stopped = time.monotonic()
            load = Load(platform, "fault", LETTERS - HOSTILE, permanent=True)
            hostile = Load(platform, "fault", HOSTILE, permanent=True, tag=HOSTILE_TAG)
            for _ in range(HOSTILE):  # hostile letters spread among the good ones
                load.send((LETTERS - HOSTILE) // HOSTILE)
                hostile.send(1)
            load.task_ids.update(hostile.task_ids)
            load.wait_done(timeout=300, states=("FAILURE",))
            # A task's FAILURE is stored before its on_failure spools the letter: wait for it.
            spool = platform.redis_client()
            spooled = wait_for(lambda: spool.llen("k1:dlq:spool") >= LETTERS and
                               spool.llen("k1:dlq:spool"), timeout=60,
                               message=lambda: f"{spool.llen('k1:dlq:spool')} letters spooled")
            # While it is down: 503 where the database is needed, the rest still served.
            assert api.get("/api/dlq").status_code == 503
            assert requests.get(f"{web}/api/health", timeout=10).status_code == 503
            accepted = api.post("/api/tasks", json={"task": "k1.tasks.demo.flaky",
                                                    "project_id": "fault", "kwargs": {}})
            assert accepted.status_code == 202, accepted.text
            time.sleep(max(0.0, DOWNTIME - (time.monotonic() - stopped)))

            database.start()
            restarted = time.monotonic()
            engine = create_engine(url)

            def written() -> int:
                """Letters of the load stored: written (repaired if need be) or quarantined."""
                from k1.recovery.dlq.models import DeadLetter, QuarantinedLetter

                ids = list(load.task_ids.values())
                with engine.connect() as connection:
                    return sum(connection.scalar(
                        select(func.count()).select_from(model).where(model.task_id.in_(ids)))
                        for model in (DeadLetter, QuarantinedLetter))

            def drained() -> bool:
                platform.client.send_task("k1.dlq.drain_spool").get(timeout=60)
                return written() >= LETTERS

            wait_for(drained, timeout=180, interval=1,
                     message=lambda: f"{written()} of {LETTERS} letters written")
            recovered = time.monotonic()
            assert operator.get("/api/dlq/stats").status_code == 200
            outcome = report(Outcome(
                scenario="postgres-down", load=f"{LETTERS} tasks dying for good (non-"
                f"retryable), {HOSTILE} of them with a NUL and a lone surrogate in their "
                "arguments, prefork 2", fault=f"PostgreSQL stopped (fast) for "
                f"{restarted - stopped:.0f}s while they died",
                sent=LETTERS, completed=written(), lost=LETTERS - written(), dead=written(),
                duplicated_effects=written() - LETTERS if written() > LETTERS else 0,
                recovery_s=round(recovered - restarted, 2), extra={"spooled": spooled}))
            assert spooled == LETTERS
            assert outcome.lost == 0 and outcome.duplicated_effects == 0
            engine.dispose()
    finally:
        database.stop()
