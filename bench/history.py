"""Task history benchmark: what recording costs a worker, how fast the recorder writes,
how fast history answers.

    .venv/bin/python -m bench.history [--tasks 1000] [--runs 3] [--rows 100000]

Starts its own throwaway Redis and PostgreSQL (as the tests do) and prints:

- worker throughput with K1's task transitions captured (``K1_TASK_EVENTS`` on: one
  history record per transition, from which the web processes also derive the live
  events) and not (off), alternating in one run, best of ``--runs`` each, and the CPU per
  task those runs cost the worker's processes and Redis. No recorder runs meanwhile:
  the figure is the worker's own cost (the records wait in the stream), not that of
  sharing two cores with a recorder and PostgreSQL;
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
from dataclasses import dataclass
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

# What each throughput run sets: K1's task transitions not captured at all (no history, no
# live task events), and captured (one record per transition: history and live events).
SETTINGS = {"events off": {"K1_TASK_EVENTS": "off"}, "history on": {"K1_TASK_EVENTS": "on"}}


@dataclass
class Run:
    tasks_per_s: float
    worker_cpu_ms: float  # per task: the worker's main and pool processes, user + system
    redis_cpu_ms: float  # per task: the Redis server's


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (a prefork pool) so far."""
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    ticks = 0
    for each in pids:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def throughput(tasks: int, setting: str, log_dir: Path, client) -> Run:
    """``tasks`` no-op tasks through one prefork worker (2 processes): tasks per second,
    and the CPU they cost the worker and Redis (measured over the same window)."""
    from k1.celery import app

    name = f"bench-history-{setting.replace(' ', '-')}@k1"
    worker = Process(f"worker-{setting.replace(' ', '-')}", [
        str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--loglevel", "WARNING",
        "--concurrency", "2", "--hostname", name, "--without-mingle", "--without-gossip"],
        {**os.environ, **SETTINGS[setting]}, log_dir).start()
    try:
        worker.wait_until(lambda: app.control.ping(destination=[name], timeout=0.5), 60,
                          "did not answer ping")
        for _ in range(20):  # warm up both pool processes
            app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "bench"}).get(30)
        cpu, redis_cpu = process_cpu_s(worker.pid), redis_cpu_s(client)
        started = time.perf_counter()
        results = [app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "bench"},
                                 headers={"k1_project_id": "bench"}) for _ in range(tasks)]
        for result in results:
            result.get(timeout=300)
        elapsed = time.perf_counter() - started
        return Run(tasks / elapsed, (process_cpu_s(worker.pid) - cpu) * 1000 / tasks,
                   (redis_cpu_s(client) - redis_cpu) * 1000 / tasks)
    finally:
        worker.stop()


def bench_throughput(tasks: int, runs: int, log_dir: Path, client) -> None:
    """``runs`` rounds of the two settings, alternating. Throughput: the best run of
    each (the machine's other load only ever slows a run down); CPU per task: the median
    (it depends far less on that load)."""
    figures: dict[str, list[Run]] = {setting: [] for setting in SETTINGS}
    for _ in range(runs):
        for setting in SETTINGS:
            run = throughput(tasks, setting, log_dir, client)
            figures[setting].append(run)
            print(f"  run {setting:11s} {run.tasks_per_s:7.1f} tasks/s, worker CPU "
                  f"{run.worker_cpu_ms:5.2f} ms/task, Redis CPU {run.redis_cpu_ms:5.2f} "
                  f"ms/task (load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"# worker throughput, {tasks} no-op flaky tasks, best of {runs} alternating runs; "
          "CPU per task, median")
    best = {setting: max(r.tasks_per_s for r in done) for setting, done in figures.items()}
    cpu = {setting: statistics.median(r.worker_cpu_ms for r in done)
           for setting, done in figures.items()}
    redis_cpu = {setting: statistics.median(r.redis_cpu_ms for r in done)
                 for setting, done in figures.items()}
    for setting in SETTINGS:
        print(f"{setting:11s}: {best[setting]:7.1f} tasks/s, worker CPU {cpu[setting]:5.2f} "
              f"ms/task, Redis CPU {redis_cpu[setting]:5.2f} ms/task")
    print(f"ratio history on/off: {best['history on'] / best['events off']:.3f}")
    print(f"worker CPU per task: history (and the live events) "
          f"{cpu['history on'] - cpu['events off']:+.2f} ms", flush=True)


def bench_recorder(client) -> None:
    """One recorder drains the backlog the throughput runs left in the stream."""
    from k1.history.recorder import Recorder
    from k1.history.stream import STREAM_KEY

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
    """Tasks and their runs inserted server-side (generate_series): a million in a minute
    or two, where the recorder would take far longer; the shapes are the recorder's.
    """
    from sqlalchemy import text

    from k1.db import get_engine

    tasks = text("""
        INSERT INTO task_history (task_id, task_name, project_id, user_id, queue, state,
            created_at, submitted_at, started_at, finished_at, queue_wait_ms, runtime_ms,
            worker, attempts, args, kwargs, result, error_type, error_message, search_text,
            updated_at)
        SELECT md5(g::text), 'k1.tasks.demo.flaky', 'p' || (g % 50), 'bench', 'celery',
            CASE WHEN g % 20 = 0 THEN 'FAILURE' ELSE 'SUCCESS' END,
            now() - (:rows - g) * interval '1 second', now() - (:rows - g) * interval '1 second',
            now() - (:rows - g) * interval '1 second' + interval '2 ms',
            now() - (:rows - g) * interval '1 second' + interval '5 ms', 2, 3,
            'w' || (g % 8) || '@bench', 1, '[]'::jsonb,
            jsonb_build_object('project_id', 'p' || (g % 50), 'n', g),
            CASE WHEN g % 20 = 0 THEN NULL ELSE '{''runs'': 1}' END,
            CASE WHEN g % 20 = 0 THEN 'ValueError' END,
            CASE WHEN g % 20 = 0 THEN 'bad input number ' || g END,
            '[] {"n": ' || g || ', "project_id": "p' || (g % 50) || '"}'
                || CASE WHEN g % 20 = 0 THEN ' ValueError bad input number ' || g ELSE '' END,
            now()
        FROM generate_series(1, :rows) AS g""")
    runs = text("""
        INSERT INTO task_attempts (task_id, run, attempt, received_at, started_at, ended_at,
            worker, outcome, runtime_ms)
        SELECT task_id, 1, 1, submitted_at, started_at, finished_at, worker,
            CASE WHEN state = 'FAILURE' THEN 'failed' ELSE 'succeeded' END, runtime_ms
        FROM task_history t
        WHERE NOT EXISTS (SELECT 1 FROM task_attempts a WHERE a.task_id = t.task_id)""")
    with get_engine().begin() as connection:
        connection.execute(tasks, {"rows": rows})
        connection.execute(runs)
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE task_history"))
        connection.execute(text("VACUUM ANALYZE task_attempts"))


def bench_reads(rows: int, web: str, token: str) -> None:
    import requests

    from k1.db import get_engine

    with get_engine().connect() as connection:
        some = [row[0] for row in connection.exec_driver_sql(
            "SELECT task_id FROM task_history ORDER BY random() LIMIT 200")]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    queries = [{}, {"project_id": "p3"}, {"state": "SUCCESS", "worker": "w1@bench"},
               {"q": "number 4242"}, {"q": some[0][:8]}, {"since": "2000-01-01", "limit": 100}]
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
    parser.add_argument("--rows", type=int, default=100_000,
                        help="tasks in history for the read latencies (0: no reads)")
    parser.add_argument("--runs", type=int, default=3,
                        help="throughput runs with history off and on, alternating")
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
        bench_throughput(args.tasks, args.runs, logs, redis_server.client())
        bench_recorder(redis_server.client())
        if not args.rows:
            return
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
