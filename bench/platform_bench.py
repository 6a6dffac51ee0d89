"""The platform benchmark, run as ``python -m bench.platform`` (``bench/platform.py``): K1
against stock Celery, the cost of each durability setting, task reads through the web
process, and the memory of each process type.

    .venv/bin/python -m bench.platform            # 2,000 tasks x 3 alternating runs, ~13 min
    .venv/bin/python -m bench.platform --quick    # 1,000 tasks x 1 run, ~5 min

Own Redis (and SQLite) through :class:`bench.realtime.Bench`; every worker is prefork
with 2 processes and is started afresh for each run; runs alternate over every
configuration so that the shared machine's load hits them alike.

- **throughput**: ``--tasks`` no-op tasks sent at once (one producer), tasks per second
  from the first send until the queue and the unacknowledged set are empty (the same
  test for every configuration: stock Celery has no result backend to poll). *stock* is
  Celery's defaults (``bench.platform_app``, no result backend); *durable* adds every
  durability setting K1 uses (``bench.platform_app.SETTINGS``); *durable - X* drops one
  of them (what X costs inside the durable set: the figure that decides whether X pays),
  *stock + X* adds one (``track_started`` and ``extended`` only act with results, so
  they are added to *stock + results*); *K1* is ``k1.tasks.demo.flaky`` on a K1 worker
  (``celeryconfig``), *K1 + worker events* the same with Celery's task events on (``-E``).
- **task reads**: ``GET /api/tasks/<id>`` through the web process, each request on a new
  HTTP connection (a new green thread) and on one kept-alive connection, with the Redis
  connections it opened (``total_connections_received``); *before* is the web process
  without ``k1.celery.serve_requests`` (``bench/web_before.py``: Celery's per-thread result
  backend), *after* is K1's. Both in this run.
- **latency**: ``POST /api/tasks`` -> ``task_completed`` at a Socket.IO client at 50 and
  200 tasks/s: ``bench.events``' measurement (``EventsBench.latency``), called here.
- **memory**: RSS of the web process, the worker's main and pool processes and beat, at
  rest and the peak under load (tasks sent straight to the broker plus POSTs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.platform_app import SETTINGS  # noqa: E402
from bench.realtime import Bench, _cpu_s, _pct, _rss_mb  # noqa: E402

K1_TASK, NOOP = "k1.tasks.demo.flaky", "bench.platform_app.noop"
QUEUE, UNACKED = "celery", "unacked"  # Celery's default queue, kombu's Redis unacked hash
WARM_UP = 20  # tasks through each worker before timing: both pool processes are ready
DRAIN_POLL_S = 0.01  # a 2,000-task run lasts seconds: 10 ms is well under 1 % of it
READS = 300  # GET /api/tasks/<id> per variant: enough for a stable p95
LATENCY_RATES = (50.0, 200.0)
RATIO_GOAL = 0.6  # K1 >= 0.6 x stock Celery (issue 11, goal 2)
LOAD_POSTS_PER_S = 100.0  # POST rate during the memory-under-load phase
LOAD_S = 8.0  # seconds of load for the memory figures
RSS_SAMPLE_S = 0.2

K1_WORKER_EVENTS = "K1 + worker events (-E)"
# K1's durability settings (not prefetch4, nor the transport, which have their own rows)
ALL = [name for name in SETTINGS if name not in ("prefetch4", "k1_transport")]


def configurations(extra: bool) -> list[tuple[str, list[str] | None]]:
    """(label, settings over stock); None is K1's own worker."""
    configs: list[tuple[str, list[str] | None]] = [
        ("stock", []), ("durable", ALL), ("K1", None), (K1_WORKER_EVENTS, None)]
    for name in ALL:
        if name == "results":
            # without a result backend, track_started and extended have nothing to act on
            configs.append(("durable - results", ["acks_late", "events"]))
        else:
            configs.append((f"durable - {name}", [s for s in ALL if s != name]))
    # acks_late alone keeps a crashed worker's tasks (unacked, they come back); prefetch 1
    # only decides how many wait in a worker: what does it cost?
    configs.append(("durable, prefetch 4", [*ALL, "prefetch4"]))
    # What K1's transport costs: every send rings a doorbell, every fetch runs a script.
    configs.append(("durable + K1 transport", [*ALL, "k1_transport"]))
    if extra:
        configs += [("stock + results", ["results"]),
                    ("stock + results + track_started", ["results", "track_started"]),
                    ("stock + results + extended", ["results", "extended"]),
                    ("stock + acks_late", ["acks_late"]), ("stock + events", ["events"])]
    return configs


# The bench posts faster than one user may write by default (K1_API_WRITE_LIMIT, 50/s).
UNLIMITED_WRITES = {"K1_API_WRITE_LIMIT": "100000/second"}


class PlatformBench(Bench):
    def __init__(self, duration: float, log_dir: str) -> None:
        super().__init__(duration, log_dir)
        self.env.update(UNLIMITED_WRITES)
    def sender(self, settings: list[str] | None) -> Any:
        """A client app sending as the configuration's own clients do (task-sent events)."""
        from celery import Celery

        app = Celery("bench-sender", broker=self.redis.url)
        app.conf.update(task_serializer="json", accept_content=["json"])
        for name in [*ALL, "k1_transport"] if settings is None else settings:
            if name in ("events", "k1_transport"):  # K1's own clients send through it
                app.conf.update(SETTINGS[name])
        return app

    def worker(self, label: str, settings: list[str] | None) -> Any:
        module = "k1.celery" if settings is None else "bench.platform_app"
        env = {"BENCH_SETTINGS": ",".join(settings or [])}
        name = "".join(c for c in label if c.isalnum() or c == "-")
        # -E: Celery's task events on in a K1 worker, as celeryconfig had them before
        events = ["-E"] if label == K1_WORKER_EVENTS else []
        return self.process(f"worker-{name}", [
            sys.executable, "-m", "celery", "-A", module, "worker", "--loglevel", "WARNING",
            "--concurrency", "2", "--hostname", f"bench-{name}@k1", "--without-mingle",
            "--without-gossip", *events], env).start()

    def send(self, app: Any, name: str, count: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task(name, kwargs={"project_id": "bench"}, producer=producer,
                              headers={"k1_project_id": "bench"})

    def drained(self, timeout: float) -> None:
        client = self.redis.client()
        deadline = time.monotonic() + timeout
        while client.llen(QUEUE) or client.hlen(UNACKED):
            if time.monotonic() > deadline:
                held = [raw[:300] for raw in client.hvals(UNACKED)[:3]]
                raise TimeoutError(f"{client.llen(QUEUE)} queued, {client.hlen(UNACKED)} "
                                   f"unacked after {timeout:.0f} s: {held}")
            time.sleep(DRAIN_POLL_S)
        client.close()

    def cpu_s(self, worker: Any) -> tuple[float, float]:
        """CPU seconds used so far by the worker (main and pool processes) and by Redis."""
        from tests.fault.platform import pool_children

        used = self.redis.client().info("cpu")
        return (sum(_cpu_s(pid) for pid in [worker.pid, *pool_children(worker)]),
                float(used["used_cpu_user"]) + float(used["used_cpu_sys"]))

    def throughput(self, label: str, settings: list[str] | None,
                   tasks: int) -> tuple[float, float, float]:
        """Tasks per second, and CPU milliseconds per task of the worker and of Redis."""
        app = self.sender(settings)
        worker = self.worker(label, settings)
        try:
            worker.wait_until(lambda: app.control.ping(timeout=0.5), 60, "no ping")
            name = K1_TASK if settings is None else NOOP
            self.send(app, name, WARM_UP)
            self.drained(60)
            worker_cpu, redis_cpu = self.cpu_s(worker)
            started = time.perf_counter()
            self.send(app, name, tasks)
            self.drained(600)
            elapsed = time.perf_counter() - started
            worker_after, redis_after = self.cpu_s(worker)
            return (tasks / elapsed, (worker_after - worker_cpu) / tasks * 1000,
                    (redis_after - redis_cpu) / tasks * 1000)
        finally:
            worker.stop()
            app.close()
            self.redis.client().flushdb()  # results and events of this run: not the next's

    def web(self, before: bool) -> tuple[Any, str]:
        """K1's web process; ``before``: without ``serve_requests`` (Celery's defaults)."""
        import requests

        port = self.free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "bench.web_before" if before else "k1.web"]
        proc = self.process("web-before" if before else "web", argv, {"PORT": str(port)})
        proc.start()
        proc.wait_until(lambda: requests.get(f"{url}/api/health", timeout=2).ok, 60,
                        "did not serve")
        return proc, url

    def reads(self, url: str) -> dict[str, float]:
        """GET /api/tasks/<id> latencies (ms) and Redis connections opened per request."""
        import requests

        headers = {"Authorization": f"Bearer {self.token}"}
        task_id = requests.post(f"{url}/api/tasks", headers=headers, timeout=30, json={
            "task": K1_TASK, "project_id": "bench"}).json()["task_id"]
        client = self.redis.client()
        out: dict[str, float] = {}
        for mode in ("fresh", "keepalive"):
            session = requests.Session()
            session.headers.update(headers)
            if mode == "fresh":
                session.headers["Connection"] = "close"
            session.get(f"{url}/api/tasks/{task_id}", timeout=30).raise_for_status()
            opened = int(client.info("stats")["total_connections_received"])
            times = []
            for _ in range(READS):
                started = time.perf_counter()
                session.get(f"{url}/api/tasks/{task_id}", timeout=30).raise_for_status()
                times.append(time.perf_counter() - started)
            opened = int(client.info("stats")["total_connections_received"]) - opened
            times.sort()
            out[f"{mode}_p50"], out[f"{mode}_p95"] = _pct(times, 0.5), _pct(times, 0.95)
            out[f"{mode}_conns"] = opened / READS
        client.close()
        return out

    def memory(self, tasks: int) -> dict[str, tuple[float, float]]:
        """RSS in MB of each process type: (at rest, peak under load)."""
        import requests

        from tests.fault.platform import pool_children

        worker = self.worker("K1-memory", None)
        k1_cli = os.path.join(os.path.dirname(sys.executable), "k1")
        beat = self.process("beat", [k1_cli, "beat"]).start()
        web, url = self.web(before=False)
        app = self.sender(None)
        try:
            worker.wait_until(lambda: app.control.ping(timeout=0.5), 60, "no ping")
            self.send(app, K1_TASK, WARM_UP)
            self.drained(60)
            time.sleep(3)  # at rest: start-up done, nothing running

            def sample() -> dict[str, float]:
                children = pool_children(worker)
                return {"web": _rss_mb(web.pid), "worker (main)": _rss_mb(worker.pid),
                        "worker (pool child, max)": max(map(_rss_mb, children or [0])),
                        "beat": _rss_mb(beat.pid)}

            rest = sample()
            peak = dict(rest)
            stop = threading.Event()

            def sampler() -> None:
                while not stop.wait(RSS_SAMPLE_S):
                    for key, value in sample().items():
                        peak[key] = max(peak[key], value)

            thread = threading.Thread(target=sampler, daemon=True)
            thread.start()
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            self.send(app, K1_TASK, tasks)
            begin = time.perf_counter()
            for seq in range(int(LOAD_POSTS_PER_S * LOAD_S)):
                pause = begin + seq / LOAD_POSTS_PER_S - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                session.post(f"{url}/api/tasks", timeout=30, json={
                    "task": K1_TASK, "project_id": "bench"}).raise_for_status()
            self.drained(600)
            stop.set()
            thread.join()
            return {key: (rest[key], peak[key]) for key in rest}
        finally:
            for proc in (web, beat, worker):
                proc.stop()
            app.close()


def _machine() -> str:
    return f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per throughput run")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds of load per latency rate")
    parser.add_argument("--quick", action="store_true",
                        help="1 run of 1,000 tasks, no 'stock + X', 5 s per latency rate")
    parser.add_argument("--stock-plus", action="store_true",
                        help="also stock + each setting (5 more configurations)")
    parser.add_argument("--phases", default="throughput,reads,latency,memory")
    parser.add_argument("--only", help="comma-separated throughput configurations "
                        "(stock, durable and K1 are always run)")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.runs, args.duration = 1000, 1, 5.0
    phases = set(args.phases.split(","))
    bench = PlatformBench(args.duration, os.path.join(ROOT, "artifacts", "logs", "bench"))
    print(f"# K1 platform bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{_machine()}; {args.tasks} no-op tasks x {args.runs} alternating runs, "
          "prefork 2", flush=True)
    try:
        if "throughput" in phases:
            configs = configurations(args.stock_plus and not args.quick)
            if args.only:
                keep = {"stock", "durable", "K1", *args.only.split(",")}
                configs = [(label, settings) for label, settings in configs if label in keep]
            rates: dict[str, list[float]] = {label: [] for label, _ in configs}
            cpu: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in configs}
            for n in range(args.runs):
                for label, settings in configs:
                    rate, worker_ms, redis_ms = bench.throughput(label, settings, args.tasks)
                    rates[label].append(rate)
                    cpu[label].append((worker_ms, redis_ms))
                    print(f"run {n + 1} {label:<34} {rate:7.1f} tasks/s, CPU ms/task: worker "
                          f"{worker_ms:5.2f}, Redis {redis_ms:5.2f} "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            _print_throughput(rates, cpu, args.runs)
        if "reads" in phases:
            print("\n# GET /api/tasks/<id>, "
                  f"{READS} each; ms; Redis connections opened per request", flush=True)
            for before in (True, False, True, False):
                proc, url = bench.web(before)
                try:
                    r = bench.reads(url)
                finally:
                    proc.stop()
                print(f"{'before' if before else 'after ':<6}  new HTTP connection: p50 "
                      f"{r['fresh_p50']:5.1f} p95 {r['fresh_p95']:5.1f}, "
                      f"{r['fresh_conns']:.2f} conn/req | kept alive: p50 "
                      f"{r['keepalive_p50']:5.1f} p95 {r['keepalive_p95']:5.1f}, "
                      f"{r['keepalive_conns']:.2f} conn/req", flush=True)
        if "latency" in phases:
            _latency(args.duration)
        if "memory" in phases:
            print(f"\n# RSS, MB: at rest / peak under load ({args.tasks} tasks to the broker, "
                  f"then {LOAD_POSTS_PER_S:.0f} POST/s for {LOAD_S:.0f} s)", flush=True)
            for key, (rest, peak) in bench.memory(args.tasks).items():
                print(f"{key:<26} {rest:6.1f} / {peak:6.1f}", flush=True)
    finally:
        bench.close()


def _print_throughput(rates: dict[str, list[float]],
                      cpu: dict[str, list[tuple[float, float]]], runs: int) -> None:
    stock = rates["stock"]
    durable_cpu = statistics.median(w + r for w, r in cpu["durable"])
    print("\n# throughput, tasks/s: min-max (median), ratio per run to stock; CPU ms per "
          "task (worker + Redis, median) and its difference to durable's")
    for label, values in rates.items():
        to_stock = [v / s for v, s in zip(values, stock, strict=True)]
        total = statistics.median(w + r for w, r in cpu[label])
        print(f"{label:<34} {min(values):6.0f}-{max(values):<6.0f} "
              f"({statistics.median(values):6.0f})  x stock "
              f"{', '.join(f'{r:.2f}' for r in to_stock):<16} CPU {total:5.2f} ms "
              f"({total - durable_cpu:+5.2f})")
    k1 = [k / s for k, s in zip(rates["K1"], stock, strict=True)]
    print(f"K1 / stock: median {statistics.median(k1):.2f} (goal >= {RATIO_GOAL}) over "
          f"{runs} run(s)", flush=True)


def _latency(duration: float) -> None:
    try:
        from bench.events import EventsBench
    except ImportError:  # bench/events.py (task events) owns this measurement
        print("\n# POST -> task_completed: bench/events.py is not here; skipped", flush=True)
        return
    print(f"\n# POST /api/tasks -> task_completed at a Socket.IO client ({duration:.0f} s "
          "per rate; bench.events)", flush=True)
    for rate in LATENCY_RATES:
        events = EventsBench(duration, os.path.join(ROOT, "artifacts", "logs", "bench"))
        events.env.update(UNLIMITED_WRITES)
        try:
            r = events.latency(rate, duration)
        finally:
            events.close()
        print(f"{rate:5.0f} tasks/s: p50 {r['p50']:6.1f} ms, p95 {r['p95']:6.1f} ms, p99 "
              f"{r['p99']:6.1f} ms, received {r['received']:.1%} (load {r['load']:.1f})",
              flush=True)


if __name__ == "__main__":
    main()
