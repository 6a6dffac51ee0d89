"""Task events benchmark: what K1's events cost a worker, and how fast they reach a client.

    .venv/bin/python -m bench.events                    # 5,000 tasks x 3 runs each, ~4 min
    .venv/bin/python -m bench.events --tasks 1000 --runs 1 --rate 50 --duration 5

It starts its own Redis (and, for the latency, the web process), each in a process of its
own, on the infrastructure of :mod:`bench.realtime`:

- **throughput**: one worker (prefork, 2 processes, ``celeryconfig``'s settings, Celery's
  own task events on) works off ``--tasks`` no-op tasks sent at once; tasks per second
  from the first send to the last result. *plain* is ``bench.baseline_tasks.flaky_plain``
  with ``K1_TASK_EVENTS=off`` (Celery with K1's settings and no K1 events); *K1* is
  ``k1.tasks.demo.flaky`` with K1's events on. Runs alternate (plain, K1, plain, ...) so
  that the machine's load hits both alike; the goal is K1 >= 0.95 x plain in one run.
  Also the worker's CPU time per task (main process and pool children, from /proc): on a
  machine shared with other work, wall-clock rates swing with the load, CPU per task much
  less; plain/K1 CPU per task is the throughput ratio of a worker that has the cores.
- **publish CPU** (``--publish-cpu``): the transitions of ``--tasks`` tasks (received +
  started, then succeeded, as a pool child captures their history records) at
  ``--pace`` tasks/s through one :class:`k1.events.Publisher`, CPU time of the process
  (all threads) per task, for each candidate: *sync* (every publish waits for its round
  trip: K1 before the buffer), *buffered* (the flusher sends at once), *linger* (the
  flusher waits ``FLUSH_LINGER`` to gather a task's events into one round trip) and
  *before* (the linger, with each transition's Socket.IO events published beside its
  record, as K1 did before the web processes derived them from the records).
- **latency**: ``POST /api/tasks`` at ``--rate`` tasks/s for ``--duration`` s, each timed
  from just before its POST to the ``task_completed`` event at a Socket.IO client
  subscribed to the project. Goal: p95 <= 25 ms at 100 tasks/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.realtime import Bench, _pct  # noqa: E402

PLAIN, K1 = "bench.baseline_tasks.flaky_plain", "k1.tasks.demo.flaky"
WARM_UP = 20  # tasks through each worker before timing: both pool processes are ready
POLL_CHUNK = 500  # result keys read per MGET while waiting for the last task
THROUGHPUT_GOAL, LATENCY_GOAL_MS = 0.95, 25.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class EventsBench(Bench):
    def worker(self, kind: str, n: int) -> Any:
        env = {"K1_TASK_EVENTS": "off" if kind == "plain" else "on"}
        return self.process(f"worker-{kind}-{n}", [
            sys.executable, "-m", "celery", "-A", "k1.celery", "worker", "--loglevel",
            "WARNING", "--concurrency", "2", "--hostname", f"bench-{kind}-{n}@k1",
            "--without-mingle", "--without-gossip", "--include", "bench.baseline_tasks"],
            env).start()

    def throughput(self, kind: str, tasks: int, n: int) -> tuple[float, float]:
        """Tasks per second through one fresh worker, and its CPU milliseconds per task."""
        from celery import Celery

        name = PLAIN if kind == "plain" else K1
        app = Celery("bench", broker=self.redis.url, backend=self.redis.url)
        worker = self.worker(kind, n)
        try:
            worker.wait_until(lambda: app.control.ping(timeout=0.5), 60, "no ping")
            for _ in range(WARM_UP):
                app.send_task(name, kwargs={"project_id": "bench"}).get(timeout=60)
            cpu_before = _tree_cpu_s(worker.pid)
            started = time.perf_counter()
            with app.producer_or_acquire() as producer:
                ids = [app.send_task(name, kwargs={"project_id": "bench"}, producer=producer,
                                     headers={"k1_project_id": "bench"}).id
                       for _ in range(tasks)]
            _wait_for_results(self.redis.client(), ids, timeout=600)
            elapsed = time.perf_counter() - started
            return tasks / elapsed, (_tree_cpu_s(worker.pid) - cpu_before) / tasks * 1000
        finally:
            worker.stop()

    def latency(self, rate: float, duration: float) -> dict[str, float]:
        """POST /api/tasks -> task_completed at a subscribed client, in milliseconds."""
        import requests
        import socketio

        worker = self.worker("k1", 0)
        web, url = self.server("k1", "eventlet")
        arrived: dict[str, float] = {}
        client = socketio.Client(reconnection=False)
        client.on("task_completed", lambda data: arrived.setdefault(data["task_id"],
                                                                    time.perf_counter()))
        try:
            from celery import Celery

            app = Celery("bench", broker=self.redis.url, backend=self.redis.url)
            worker.wait_until(lambda: app.control.ping(timeout=0.5), 60, "no ping")
            client.connect(url, auth={"token": self.token}, transports=["websocket"],
                           wait_timeout=30)
            assert client.call("subscribe", {"project_id": "bench"}, timeout=30)["ok"]
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            sent: dict[str, float] = {}
            lock = threading.Lock()

            def post() -> None:
                started = time.perf_counter()
                response = session.post(f"{url}/api/tasks", timeout=30, json={
                    "task": K1, "project_id": "bench"})
                response.raise_for_status()
                with lock:
                    sent[response.json()["task_id"]] = started

            for _ in range(WARM_UP):
                post()
            sent.clear()
            interval, count = 1 / rate, int(rate * duration)
            begin = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                for seq in range(count):
                    pause = begin + seq * interval - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    pool.submit(post)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not set(sent) <= set(arrived):
                time.sleep(0.05)
            delays = sorted((arrived[t] - s) for t, s in sent.items() if t in arrived)
            return {"p50": _pct(delays, 0.5), "p95": _pct(delays, 0.95),
                    "p99": _pct(delays, 0.99), "received": len(delays) / len(sent),
                    "load": os.getloadavg()[0]}
        finally:
            client.disconnect()
            web.stop()
            worker.stop()


def _task_entries(task_id: str, *, before: bool) -> tuple[list[Any], list[Any]]:
    """A pool child's buffer entries for one no-op task, in its two publishes (received +
    started, then succeeded): the transitions' history records, as the signal handlers
    capture them; ``before``: also each transition's Socket.IO event (and
    ``task_completed``), as K1 published them before the records became the one write."""
    from k1.events import HISTORY, make_event
    from k1.history.capture import arguments, record

    fields = {"task_name": K1, "project_id": "bench", "user_id": "bench", "attempt": 1,
              "worker": "bench@k1"}
    received = make_event("received", task_id=task_id, state="RECEIVED", **fields)
    started = make_event("started", task_id=task_id, state="STARTED", **fields)
    done = make_event("succeeded", task_id=task_id, state="SUCCESS", result="{}",
                      runtime_ms=0.1, **fields)
    first: list[Any] = [(HISTORY, record(received, queue="celery",
                                         **arguments([], {"project_id": "bench"}))),
                        (HISTORY, record(started))]
    second: list[Any] = [(HISTORY, record(done))]
    if before:
        first = [("task_event", received), ("task_event", started), *first]
        second = [("task_event", done), ("task_completed", done), *second]
    return first, second


def publish_cpu(redis_url: str, tasks: int, pace: float,
                lingers: tuple[float, ...] = ()) -> dict[str, float]:
    """CPU microseconds per task of K1's event path, per publishing candidate (and per
    linger in ``lingers``, beside the default's); *before* is the default linger with the
    events published beside the records."""
    from k1.events import FLUSH_LINGER, Publisher

    results = {}
    candidates = [("sync", 0.0, True, False), ("buffered", 0.0, False, False),
                  ("linger", FLUSH_LINGER, False, False),
                  ("before: events + records", FLUSH_LINGER, False, True)]
    candidates += [(f"linger {linger * 1000:g} ms", linger, False, False)
                   for linger in lingers]
    for candidate, linger, wait, before in candidates:
        publisher = Publisher(redis_url, f"bench-{candidate}", flush_linger=linger)
        interval = 1 / pace
        cpu_before, begin = time.process_time(), time.perf_counter()
        for n in range(tasks):
            pause = begin + n * interval - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            first, second = _task_entries(f"{candidate}-{n}", before=before)
            publisher.publish(first, wait=wait)
            publisher.publish(second, wait=wait)
        publisher.flush()
        results[candidate] = (time.process_time() - cpu_before) / tasks * 1e6
    return results


def flush_cpu(redis_url: str, flushes: int) -> float:
    """CPU microseconds of one flush of a task's first two transitions (received,
    started), sent in the caller's thread: what one round trip of the publisher costs a
    process."""
    from k1.events import Publisher

    publisher = Publisher(redis_url, "bench-flush", flush_linger=0)
    publisher.synchronous = True

    def one(n: int) -> None:
        publisher.publish(_task_entries(f"f-{n}", before=False)[0])

    for n in range(WARM_UP * 10):
        one(n)
    cpu_before = time.process_time()
    for n in range(flushes):
        one(n)
    return (time.process_time() - cpu_before) / flushes * 1e6


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
        cpu[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    tree, todo = set(), [pid]
    while todo:
        current = todo.pop()
        tree.add(current)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return sum(cpu.get(p, 0.0) for p in tree)


def _wait_for_results(client: Any, ids: list[str], timeout: float) -> None:
    """Wait until every task has a SUCCESS result (they finish roughly in order)."""
    keys = [f"celery-task-meta-{task_id}" for task_id in ids]
    deadline, done = time.monotonic() + timeout, 0
    while done < len(keys):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(keys) - done} of {len(keys)} tasks unfinished")
        chunk = client.mget(keys[done:done + POLL_CHUNK])
        finished = 0
        for value in chunk:
            if value is None or '"SUCCESS"' not in value:
                break
            finished += 1
        done += finished
        if finished < len(chunk):
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--rate", type=float, default=100.0, help="tasks/s for the latency")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of latency load")
    parser.add_argument("--pace", type=float, default=300.0,
                        help="tasks/s of one pool process, for --publish-cpu")
    parser.add_argument("--publish-cpu", action="store_true",
                        help="only the CPU cost of publishing, per candidate, and of one flush")
    parser.add_argument("--lingers", default="",
                        help="with --publish-cpu: more lingers to try, seconds, comma-separated")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    bench = EventsBench(args.duration, os.path.join(ROOT, "artifacts", "logs", "bench"))
    print(f"# task events bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    try:
        if args.publish_cpu:
            lingers = tuple(float(v) for v in args.lingers.split(",") if v)
            for candidate, us in publish_cpu(bench.redis.url, args.tasks, args.pace,
                                             lingers).items():
                print(f"publish CPU, {candidate:<8}: {us:6.1f} µs per task "
                      f"({args.pace:.0f} tasks/s)", flush=True)
            print(f"one flush of a task's first two events: "
                  f"{flush_cpu(bench.redis.url, args.tasks):6.1f} µs CPU", flush=True)
            return
        if not args.skip_throughput:
            rates: dict[str, list[float]] = {"plain": [], "k1": []}
            cpu: dict[str, list[float]] = {"plain": [], "k1": []}
            for n in range(args.runs):
                for kind in ("plain", "k1"):
                    rate, cpu_ms = bench.throughput(kind, args.tasks, n)
                    rates[kind].append(rate)
                    cpu[kind].append(cpu_ms)
                    print(f"run {n + 1} {kind:<5} {rate:7.1f} tasks/s, worker CPU "
                          f"{cpu_ms:5.2f} ms/task (load {os.getloadavg()[0]:.1f})", flush=True)
            ratios = [k / p for k, p in zip(rates["k1"], rates["plain"], strict=True)]
            cpu_ratios = [p / k for k, p in zip(cpu["k1"], cpu["plain"], strict=True)]
            print(f"plain Celery (K1 settings, no K1 events): "
                  f"{min(rates['plain']):.0f}-{max(rates['plain']):.0f} tasks/s, "
                  f"{statistics.median(cpu['plain']):.2f} ms CPU/task (median)\n"
                  f"K1 flaky, events on:                      "
                  f"{min(rates['k1']):.0f}-{max(rates['k1']):.0f} tasks/s, "
                  f"{statistics.median(cpu['k1']):.2f} ms CPU/task (median)\n"
                  f"ratio K1/plain, tasks/s per run: {', '.join(f'{r:.2f}' for r in ratios)}\n"
                  f"ratio K1/plain, by CPU per task: {', '.join(f'{r:.2f}' for r in cpu_ratios)};"
                  f" median {statistics.median(cpu_ratios):.2f} (goal >= {THROUGHPUT_GOAL})",
                  flush=True)
        if not args.skip_latency:
            r = bench.latency(args.rate, args.duration)
            print(f"POST -> task_completed at {args.rate:.0f} tasks/s for "
                  f"{args.duration:.0f} s: p50 {r['p50']:.1f} ms, p95 {r['p95']:.1f} ms, "
                  f"p99 {r['p99']:.1f} ms, received {r['received']:.1%} "
                  f"(load {r['load']:.1f}; goal p95 <= {LATENCY_GOAL_MS:.0f} ms)", flush=True)
    finally:
        bench.close()


if __name__ == "__main__":
    main()
