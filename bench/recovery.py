"""Recovery benchmark: dead-letter writes, DLQ stats at 1,000,000 rows, bulk replay, and
the cost of K1's recovery wrapping on task throughput (a ratio, measured in the same run).

    .venv/bin/python -m bench.recovery [--rows 1000000] [--tasks 2000]
                                       [--parts writes replay throughput stats]

Starts its own throwaway Redis and PostgreSQL (as the tests do) and prints figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
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


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def letter(project: str, i: int) -> dict:
    now = datetime.now(UTC)
    return {
        "task_id": str(uuid.uuid4()), "task_name": "k1.tasks.demo.flaky", "queue": "celery",
        "args": [], "kwargs": {"project_id": project, "n": i}, "project_id": project,
        "user_id": "bench", "exception_type": "TimeoutError", "exception_message": "slow",
        "traceback": "Traceback (most recent call last):\n  ...\nTimeoutError: slow\n",
        "attempts": 3, "first_failed_at": now - timedelta(seconds=7), "died_at": now,
        "worker": "bench@host", "breaker_states": {"analysis": "closed"},
    }


def bulk_load(rows: int) -> None:
    """Rows inserted server-side (generate_series): 1,000,000 in seconds, not minutes."""
    from sqlalchemy import text

    from k1.db import get_engine

    statement = text("""
        INSERT INTO dead_letters (task_id, task_name, queue, args, kwargs, project_id,
            user_id, exception_type, exception_message, traceback, attempts,
            first_failed_at, died_at, worker, breaker_states, status, replay_count)
        SELECT 'bulk-' || g, (ARRAY['k1.tasks.demo.flaky','k1.tasks.analyze_profile',
                'k1.conductor.render_report'])[1 + g % 3], 'celery', '[]'::jsonb,
            jsonb_build_object('project_id', 'p' || (g % 50)), 'p' || (g % 50), 'bench',
            (ARRAY['TimeoutError','HTTPError','NonRetryableError','ConnectionError'])[1 + g % 4],
            'failure ' || g, 'Traceback ...', 1 + g % 3,
            now() - (g % 2000000) * interval '1 second' - interval '5 seconds',
            now() - (g % 2000000) * interval '1 second', 'bench@host',
            '{"analysis": "closed"}'::jsonb,
            CASE WHEN g % 10 = 0 THEN 'replayed' ELSE 'dead' END, 0
        FROM generate_series(1, :rows) AS g""")
    with get_engine().begin() as connection:
        connection.execute(statement, {"rows": rows})
    # What autovacuum does after a load like this; index-only scans need the visibility map.
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE dead_letters"))


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms"


def bench_writes(store) -> None:
    single = 2000
    elapsed = timed(lambda: [store.record(letter("w1", i)) for i in range(single)])
    print(f"dead letters written, one by one:      {single / elapsed:8.0f} /s ({single} letters)")
    batches, size = 40, 500
    elapsed = timed(lambda: [store.record_many([letter("w2", i) for i in range(size)])
                             for _ in range(batches)])
    print(f"dead letters written, batches of {size}:  {batches * size / elapsed:8.0f} /s "
          f"({batches * size} letters)")


def bench_count_triggers(store) -> None:
    """What keeping dlq_counts costs a write: the same one-by-one writes with the triggers
    on and off, alternated; the counts are rebuilt afterwards.
    """
    from sqlalchemy import text

    from k1.db import get_engine

    def switch(state: str) -> None:
        with get_engine().begin() as connection:
            connection.execute(text(f"ALTER TABLE dead_letters {state} TRIGGER USER"))

    rates: dict[str, list[float]] = {"ENABLE": [], "DISABLE": []}
    size = 250
    try:
        for state in ("ENABLE", "DISABLE") * 4:
            switch(state)
            elapsed = timed(lambda: [store.record(letter("trg", i)) for i in range(size)])
            rates[state].append(size / elapsed)
    finally:
        switch("ENABLE")
        with get_engine().begin() as connection:
            connection.execute(text("DELETE FROM dlq_counts"))
            connection.execute(text(
                "INSERT INTO dlq_counts SELECT coalesce(project_id, ''), task_name, "
                "exception_type, count(*) FROM dead_letters WHERE status = 'dead' "
                "GROUP BY 1, 2, 3"))
    on, off = statistics.median(rates["ENABLE"]), statistics.median(rates["DISABLE"])
    print(f"one by one, count triggers on / off:    {on:8.0f} / {off:.0f} /s "
          f"(ratio {on / off:.2f})")


def bench_stats(store, web_url: str, token: str, rows: int) -> None:
    import requests

    started = time.perf_counter()
    bulk_load(rows)
    print(f"loaded {rows:,} dead letters in {time.perf_counter() - started:.1f} s")
    store.stats()  # warm the cache
    new, legacy = [], []
    with counted_by_rows() as count_rows:
        for _ in range(15):  # alternated, so that both see the same machine load
            new.append(timed(store.stats))
            legacy.append(timed(count_rows))
    print(f"stats() in process, {rows:,} rows:       {percentiles(new)}")
    print(f"  the same counted from the rows:        {percentiles(legacy)}")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    samples = [timed(lambda: session.get(f"{web_url}/api/dlq/stats", timeout=60)
                     .raise_for_status()) for _ in range(15)]
    print(f"GET /api/dlq/stats, {rows:,} rows:       {percentiles(samples)}")
    page = [timed(lambda: session.get(f"{web_url}/api/dlq", params={"limit": 50},
                                      timeout=60).raise_for_status()) for _ in range(15)]
    print(f"GET /api/dlq (first page of 50):         {percentiles(page)}")
    print(f"dlq_counts == COUNT(*) by key:           {counts_match()}")


@contextlib.contextmanager
def counted_by_rows() -> Iterator[Callable[[], object]]:
    """The stats as migration 0001 computed them -- counts grouped over the dead rows,
    through the partial index it had -- for a baseline in the same run.
    """
    from sqlalchemy import text

    from k1.db import get_engine

    index = ("CREATE INDEX ix_bench_dead_counts ON dead_letters (task_name, exception_type) "
             "WHERE status = 'dead'")
    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(index))
        connection.execute(text("VACUUM ANALYZE dead_letters"))

    def count_rows() -> object:
        with get_engine().connect() as connection:
            return [connection.execute(text(
                f"SELECT {key}, count(*) FROM dead_letters WHERE status = 'dead' "
                f"GROUP BY {key}")).all() for key in ("task_name", "exception_type")]

    try:
        yield count_rows
    finally:
        with get_engine().begin() as connection:
            connection.execute(text("DROP INDEX ix_bench_dead_counts"))


def counts_match() -> bool:
    """The counts the triggers kept equal a full count of the dead rows."""
    from sqlalchemy import text

    from k1.db import get_engine

    with get_engine().connect() as connection:
        counted = set(connection.execute(text(
            "SELECT coalesce(project_id, ''), task_name, exception_type, count(*) "
            "FROM dead_letters WHERE status = 'dead' GROUP BY 1, 2, 3")))
        kept = set(connection.execute(text(
            "SELECT project_id, task_name, exception_type, dead FROM dlq_counts "
            "WHERE dead <> 0")))
    return counted == kept


def bench_replay(store) -> None:
    from k1.connections import get_redis
    from k1.recovery.dlq.filters import LetterFilter

    count = 10_000
    for start in range(0, count, 1000):
        store.record_many([letter("replay", i) for i in range(start, start + 1000)])
    elapsed = timed(lambda: store.replay_matching(LetterFilter(project_id="replay")))
    print(f"bulk replay of {count:,} letters:          {elapsed:.1f} s, "
          f"{count / elapsed:.0f} letters/s")
    get_redis().delete("celery")  # no worker runs the replayed tasks here


def bench_throughput(tasks: int, log_dir: Path) -> None:
    from celery import group

    from k1.celery import app

    worker = Process("bench-worker", [
        str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--concurrency", "2",
        "--loglevel", "WARNING", "--hostname", "bench@k1", "--without-mingle",
        "--without-gossip", "--include", "bench.baseline_tasks"], os.environ, log_dir).start()
    try:
        worker.wait_until(lambda: app.control.ping(destination=["bench@k1"], timeout=0.5), 60,
                          "did not answer ping")
        results = {}
        for name in ("bench.baseline_tasks.flaky_plain", "k1.tasks.demo.flaky") * 2:
            signatures = [app.signature(name, kwargs={"project_id": "bench"})
                          for _ in range(tasks)]
            started = time.perf_counter()
            group(signatures).apply_async().get(timeout=600)
            results.setdefault(name, []).append(tasks / (time.perf_counter() - started))
        plain = max(results["bench.baseline_tasks.flaky_plain"])
        wrapped = max(results["k1.tasks.demo.flaky"])
        print(f"flaky, plain Celery task:                {plain:8.0f} tasks/s")
        print(f"flaky, K1Task (policy, breakers, DLQ):   {wrapped:8.0f} tasks/s")
        print(f"ratio K1 / plain:                        {wrapped / plain:8.2f}")
    finally:
        worker.stop()


PARTS = ("writes", "replay", "throughput", "stats")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                        help="what to measure (default: everything)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="k1-bench-"))
    base.chmod(0o755)
    logs = base / "logs"
    logs.mkdir()
    redis_server = RedisServer(free_port(), base / "redis", logs).start()
    postgres = PostgresServer(free_port(), base / "pg" / "data", logs).start()
    web_port = free_port()
    os.environ.update(REDIS_URL=redis_server.url, DATABASE_URL=postgres.url,
                      K1_SECRET_KEY="bench-" + uuid.uuid4().hex * 2, PORT=str(web_port),
                      K1_HOST="127.0.0.1", K1_DATA_DIR=str(base / "data"))
    web = None
    try:
        from k1.auth import create_token
        from k1.db.migrate import upgrade
        from k1.recovery.dlq.store import DeadLetterStore

        upgrade()
        store = DeadLetterStore()
        web = Process("bench-web", [sys.executable, "-m", "k1.web"], os.environ, logs).start()
        web_url = f"http://127.0.0.1:{web_port}"
        import requests

        wait_for(lambda: requests.get(f"{web_url}/api/health", timeout=2).ok, timeout=60,
                 message="web did not start")
        token = create_token("bench", ["*"], secret=os.environ["K1_SECRET_KEY"], ttl=3600)
        print(f"# K1 recovery benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} cores")
        if "writes" in args.parts:
            bench_writes(store)
            bench_count_triggers(store)
        if "replay" in args.parts:
            bench_replay(store)
        if "throughput" in args.parts:
            bench_throughput(args.tasks, logs)
        if "stats" in args.parts:
            bench_stats(store, web_url, token, args.rows)
    finally:
        if web:
            web.stop()
        postgres.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
