"""Flow-control benchmark: the cost of a limit check per task (throughput of
``k1.tasks.demo.flaky`` under a limit that never binds, against none, same run).

    .venv/bin/python -m bench.flow [--tasks 2000]

Starts its own throwaway Redis and one worker (2 processes) and prints figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import VENV_BIN, Process, RedisServer, free_port  # noqa: E402

TASK = "k1.tasks.demo.flaky"
# Limits far above what two processes reach: the check runs, it never makes a task wait.
NEVER_BINDING = {
    "none": None,
    "concurrency 1000 per project": {"tasks": [TASK], "per": "project", "concurrency": 1000},
    "concurrency + rate 100000/s": {"tasks": [TASK], "per": "project", "concurrency": 1000,
                                    "rate": "100000/s"},
}


def throughput(tasks: int) -> float:
    from celery import group

    from k1.celery import app

    signatures = [app.signature(TASK, kwargs={"project_id": "bench"}) for _ in range(tasks)]
    started = time.perf_counter()
    group(signatures).apply_async().get(timeout=600)
    return tasks / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="k1-bench-"))
    logs = base / "logs"
    logs.mkdir(parents=True)
    redis_server = RedisServer(free_port(), base / "redis", logs).start()
    os.environ.update(REDIS_URL=redis_server.url, K1_SECRET_KEY="bench-" + uuid.uuid4().hex * 2,
                      K1_DATA_DIR=str(base / "data"), K1_TASK_EVENTS="off")
    from k1.celery import app
    from k1.flow import limits

    worker = Process("bench-worker", [
        str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--concurrency", "2",
        "--loglevel", "WARNING", "--hostname", "bench@k1", "--without-mingle",
        "--without-gossip"], os.environ, logs).start()
    try:
        worker.wait_until(lambda: app.control.ping(destination=["bench@k1"], timeout=0.5), 60,
                          "did not answer ping")
        print(f"# K1 flow benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} cores, {args.tasks} tasks per run, best of {args.rounds}")
        throughput(200)  # warm up the pool processes
        results: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for label, body in NEVER_BINDING.items():
                limits.delete_runtime("bench")
                if body is not None:
                    limits.save_runtime(limits.Limit.from_dict("bench", body))
                time.sleep(limits.REFRESH_INTERVAL + 0.5)  # every process has seen it
                results.setdefault(label, []).append(throughput(args.tasks))
        plain = max(results["none"])
        for label, rates in results.items():
            print(f"{label:32s} {max(rates):8.0f} tasks/s   ratio {max(rates) / plain:5.2f}")
    finally:
        worker.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
