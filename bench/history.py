"""Task history benchmark: what recording costs a worker, how fast the recorder writes,
how fast history answers.

    .venv/bin/python -m bench.history [--tasks 1000] [--rows 100000]

Starts its own throwaway Redis and PostgreSQL (as the tests do) and prints:

- worker throughput with ``K1_TASK_HISTORY`` on and off, interleaved in one run (goal: on
  / off >= 0.98). No recorder runs meanwhile: the figure is the worker's own cost (the
  records wait in the stream), not that of sharing two cores with a recorder and
  PostgreSQL;
- the recorder's ceiling: records written per second by one recorder draining the
  backlog those runs left (three a task: received, started, succeeded);
- ``GET /api/tasks`` search and ``GET /api/tasks/<id>`` latency through the web process
  with ``--rows`` tasks in history.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402 - the path above makes tests importable
    VENV_BIN,
    PostgresServer,
    Process,
    RedisServer,
    free_port,
    wait_for,
)

RECORDS_PER_TASK = 4  # submitted, received, started, succeeded


def synthetic(count: int, start: float) -> list[dict]:
    """Records of ``count // 4`` finished tasks, as workers capture them."""
    records = []
    for n in range(count // RECORDS_PER_TASK):
        task_id, at = str(uuid.uuid4()), start + n * 0.001
        base = {"task_id": task_id, "task_name": "k1.tasks.demo.flaky", "attempt": 1,
                "project_id": f"p{n % 10}", "user_id": "bench", "worker": f"w{n % 4}@bench"}
        records += [
            {**base, "id": uuid.uuid4().hex, "type": "submitted", "ts": at,
             "args": [], "kwargs": {"project_id": f"p{n % 10}", "n": n}},
            {**base, "id": uuid.uuid4().hex, "type": "received", "ts": at + 0.0002},
            {**base, "id": uuid.uuid4().hex, "type": "started", "ts": at + 0.0004},
            {**base, "id": uuid.uuid4().hex, "type": "succeeded", "ts": at + 0.0008,
             "result": "{'runs': 1}", "runtime_ms": 0.4},
        ]
    return records


def throughput(tasks: int, history: str, log_dir: Path) -> float:
    """Tasks per second through one prefork worker (2 processes)."""
    from k1.celery import app

    name = f"bench-history-{history}@k1"
    worker = Process(f"worker-history-{history}", [
        str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--loglevel", "WARNING",
        "--concurrency", "2", "--hostname", name, "--without-mingle", "--without-gossip"],
        {**os.environ, "K1_TASK_HISTORY": history}, log_dir).start()
    try:
        worker.wait_until(lambda: app.control.ping(destination=[name], timeout=0.5), 60,
                          "did not answer ping")
        for _ in range(20):  # warm up both pool processes
            app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "bench"}).get(30)
        started = time.perf_counter()
        results = [app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "bench"},
                                 headers={"k1_project_id": "bench"}) for _ in range(tasks)]
        for result in results:
            result.get(timeout=300)
        return tasks / (time.perf_counter() - started)
    finally:
        worker.stop()


def bench_throughput(tasks: int, log_dir: Path) -> None:
    best = {"on": 0.0, "off": 0.0}
    for history in ("off", "on", "off", "on"):
        best[history] = max(best[history], throughput(tasks, history, log_dir))
    print(f"# worker throughput, {tasks} no-op flaky tasks, best of 2 interleaved runs each")
    print(f"K1_TASK_HISTORY=off: {best['off']:7.1f} tasks/s")
    print(f"K1_TASK_HISTORY=on : {best['on']:7.1f} tasks/s")
    print(f"ratio on/off: {best['on'] / best['off']:.3f}  (goal >= 0.98)", flush=True)


def bench_recorder(client) -> None:  # type: ignore[no-untyped-def]
    """One recorder drains the backlog the throughput runs left in the stream."""
    from k1.history.capture import STREAM_KEY
    from k1.history.recorder import Recorder

    backlog = client.xlen(STREAM_KEY)
    recorder = Recorder(client, name="bench")
    recorder.ensure_group()
    started = time.perf_counter()
    while recorder.step():
        pass
    elapsed = time.perf_counter() - started
    print(f"# recorder ceiling: one recorder drains the {backlog} records those runs left "
          f"(batch {recorder.batch})")
    print(f"{backlog / elapsed:8.0f} records/s, {recorder.written} new "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)


def load_rows(rows: int) -> None:
    from k1.history.store import write

    start = time.time() - 2 * 86_400
    for offset in range(0, rows, 2_500):
        write(synthetic(min(2_500, rows - offset) * RECORDS_PER_TASK, start + offset * 0.001))


def bench_reads(rows: int, web: str, token: str) -> None:
    import requests

    from k1.db import get_engine

    with get_engine().connect() as connection:
        connection.exec_driver_sql("ANALYZE task_history")
        some = [row[0] for row in connection.exec_driver_sql(
            "SELECT task_id FROM task_history ORDER BY random() LIMIT 200")]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    queries = [{}, {"project_id": "p3"}, {"state": "SUCCESS", "worker": "w1@bench"},
               {"q": "\"n\": 4242"}, {"q": some[0][:8]}, {"since": "2000-01-01", "limit": 100}]
    for label, calls in (("search", [("/api/tasks", q) for q in queries] * 40),
                         ("task page", [(f"/api/tasks/{t}", {}) for t in some])):
        samples = []
        for path, params in calls:
            started = time.perf_counter()
            response = session.get(web + path, params=params, timeout=30)
            samples.append((time.perf_counter() - started) * 1000)
            assert response.ok, response.text
        samples.sort()
        print(f"{label:10s} with {rows} tasks: p50 {statistics.median(samples):6.1f} ms, "
              f"p95 {samples[int(len(samples) * 0.95) - 1]:6.1f} ms "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="k1-bench-history-"))
    base.chmod(0o755)
    logs = ROOT / "artifacts" / "logs" / "bench-history"
    logs.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(free_port(), base / "redis", logs).start()
    postgres = PostgresServer(free_port(), base / "pg" / "data", logs).start()
    port = free_port()
    os.environ.update(REDIS_URL=redis_server.url, DATABASE_URL=postgres.url,
                      K1_SECRET_KEY="bench-" + uuid.uuid4().hex * 2, K1_DATA_DIR=str(base),
                      K1_LOG_LEVEL="WARNING", PORT=str(port), K1_HOST="127.0.0.1")
    processes: list[Process] = []
    try:
        from k1.auth import create_token
        from k1.db.migrate import upgrade

        upgrade()
        print(f"# K1 history benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        bench_throughput(args.tasks, logs)
        bench_recorder(redis_server.client())
        load_rows(args.rows)
        web = Process("bench-web", [sys.executable, "-m", "k1.web"], os.environ, logs).start()
        processes.append(web)
        url = f"http://127.0.0.1:{port}"
        import requests

        wait_for(lambda: requests.get(f"{url}/api/health", timeout=2).ok, timeout=60,
                 message="web never healthy")
        bench_reads(args.rows, url, create_token("bench", ("*",),
                                                 secret=os.environ["K1_SECRET_KEY"], ttl=3600))
    finally:
        for process in processes:
            process.stop()
        postgres.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
