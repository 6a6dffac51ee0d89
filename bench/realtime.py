"""Real-time benchmark: Socket.IO delivery latency and throughput, K1 against bare.

    .venv/bin/python bench/realtime.py              # the whole run, ~3.5 minutes
    .venv/bin/python bench/realtime.py --quick      # one small load per path, ~1 minute

It starts its own Redis, the web process and the clients, each in processes of their
own (the clients are python-socketio ``AsyncClient`` s, several hundred per process):

- **K1 path**: an emitter process captures task transitions as the worker's signal
  handlers do (``k1.history.capture``: the record buffered, sent with the counters by the
  flusher) for ``project_bench``; ``python -m k1.web`` reads them from the history
  stream and sends the ``task_event`` to clients that connected with a token and
  subscribed.
- **bare path** (the baseline): an emitter with python-socketio's write-only
  ``RedisManager`` straight to a room, relayed by a minimal Flask-SocketIO app (no K1 code).

Latency is emit (``ts`` taken in the emitter) to receipt in a client, same host clock.
Also: task throughput of a real worker with K1's signal handlers on and off
(``K1_TASK_EVENTS``), and the K1 path under each ``K1_ASYNC_MODE``.
Subcommands ``bare-server``, ``clients`` and ``emitter`` are the child processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BARE_CHANNEL = "bare-socketio"
ROOM = "bench"  # bare path room; the K1 path uses project "bench" (room project_bench)
LOADS = ((200, 50), (200, 100), (1000, 10), (1000, 20))  # (clients, events per second)
# Clients per process: at most 500, and at most ~10k deliveries/s per process, well below
# the ~30k/s that saturates one asyncio process on this machine (the server shares it).
MAX_CLIENTS_PER_PROCESS = 500
MAX_DELIVERIES_PER_PROCESS = 10_000
GOALS = "p95 < 200 ms at every load; K1 p95 <= 1.25x bare; 200 clients x 50/s: p95 <= 25 ms"


# ---- child processes ------------------------------------------------------------------

def bare_server(port: int, mode: str, redis_url: str) -> None:
    """A minimal Flask-SocketIO app relaying the message queue to room ``bench``."""
    if mode == "eventlet":
        import eventlet

        eventlet.monkey_patch()
    elif mode == "gevent":
        from gevent import monkey

        monkey.patch_all()
    from flask import Flask
    from flask_socketio import SocketIO, join_room

    app = Flask("bare")
    socketio = SocketIO(app, async_mode=mode, message_queue=redis_url, channel=BARE_CHANNEL)

    @socketio.on("connect")
    def connect(auth=None):
        join_room(ROOM)

    print("bare: listening", flush=True)
    socketio.run(app, host="127.0.0.1", port=port, log_output=False,
                 allow_unsafe_werkzeug=True)


def clients(url: str, count: int, token: str | None, project: str | None) -> None:
    """Connect ``count`` clients, print ``ready``, record latencies until ``stop`` on stdin,
    then print the results as one JSON line."""
    import asyncio

    import socketio

    latencies: list[float] = []

    def on_event(data):
        latencies.append(time.time() - data["ts"])

    async def one(limit: asyncio.Semaphore) -> socketio.AsyncClient:
        client = socketio.AsyncClient(reconnection=False)
        client.on("task_event", on_event)
        async with limit:
            await client.connect(url, auth={"token": token} if token else None,
                                 transports=["websocket"], wait_timeout=60)
            if project:
                answer = await client.call("subscribe", {"project_id": project}, timeout=60)
                assert answer["ok"], answer
        return client

    async def main() -> None:
        limit = asyncio.Semaphore(50)
        connected = await asyncio.gather(*(one(limit) for _ in range(count)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        received = len(latencies)
        await asyncio.gather(*(c.disconnect() for c in connected), return_exceptions=True)
        print(json.dumps({"received": received, "latencies": latencies[:received]}),
              flush=True)

    asyncio.run(main())


def emitter(path: str, rate: float, duration: float, redis_url: str) -> None:
    """Emit ``rate`` events per second for ``duration`` seconds on the given path."""
    if path == "k1":
        from k1.events import make_event
        from k1.history.capture import capture, record

        def send(seq: int) -> None:
            capture(record(make_event("started", task_id=f"bench-{seq}", task_name="bench",
                                      project_id="bench", state="STARTED", seq=seq)))
    else:
        import socketio

        manager = socketio.RedisManager(redis_url, channel=BARE_CHANNEL, write_only=True)

        def send(seq: int) -> None:
            manager.emit("task_event", {"type": "started", "seq": seq, "ts": time.time()},
                         namespace="/", room=ROOM)

    interval = 1 / rate
    start = time.perf_counter()
    seq = 0
    while (now := time.perf_counter()) - start < duration:
        target = start + seq * interval
        if now < target:
            time.sleep(target - now)
        send(seq)
        seq += 1
    print(json.dumps({"sent": seq}), flush=True)


# ---- orchestration --------------------------------------------------------------------

class Bench:
    def __init__(self, duration: float, log_dir: str) -> None:
        import tempfile
        from pathlib import Path

        sys.path.insert(0, ROOT)
        from tests.support import RedisServer, free_port

        self.duration = duration
        self.base = Path(tempfile.mkdtemp(prefix="k1-bench-"))
        self.logs = Path(log_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(free_port(), self.base / "redis", self.logs).start()
        self.free_port = free_port
        self.env = {
            **os.environ, "REDIS_URL": self.redis.url,
            "K1_SECRET_KEY": "bench-" + "k" * 40, "K1_DATA_DIR": str(self.base / "data"),
            "K1_HOST": "127.0.0.1", "K1_LOG_LEVEL": "WARNING", "PYTHONPATH": ROOT,
        }
        self.env.pop("DATABASE_URL", None)  # SQLite: the relay path touches no database
        os.environ.update({k: self.env[k] for k in ("REDIS_URL", "K1_SECRET_KEY",
                                                    "K1_DATA_DIR")})
        from k1.auth import create_token

        self.token = create_token("bench", ["bench"], secret=self.env["K1_SECRET_KEY"],
                                  ttl=3600)

    def process(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        from tests.support import Process

        return Process(name, argv, {**self.env, **(env or {})}, self.logs)

    def server(self, path: str, mode: str) -> tuple[object, str]:
        import requests

        port = self.free_port()
        url = f"http://127.0.0.1:{port}"
        if path == "k1":
            proc = self.process(f"web-{mode}", [sys.executable, "-m", "k1.web"],
                                {"PORT": str(port), "K1_ASYNC_MODE": mode})
        else:
            proc = self.process(f"bare-{mode}", [sys.executable, __file__, "bare-server",
                                                 "--port", str(port), "--mode", mode])
        proc.start()
        probe = "/api/health" if path == "k1" else "/socket.io/?EIO=4&transport=polling"
        proc.wait_until(lambda: requests.get(url + probe, timeout=2).status_code < 500, 60,
                        "did not serve")
        return proc, url

    def run(self, path: str, mode: str, n_clients: int, rate: float) -> dict[str, float]:
        import subprocess

        server, url = self.server(path, mode)
        groups = []
        try:
            per_process = max(1, min(MAX_CLIENTS_PER_PROCESS,
                                     int(MAX_DELIVERIES_PER_PROCESS // rate)))
            left = n_clients
            while left:
                size = min(per_process, left)
                argv = [sys.executable, __file__, "clients", "--url", url, "--count", str(size)]
                if path == "k1":
                    argv += ["--token", self.token, "--project", "bench"]
                groups.append(subprocess.Popen(argv, env=self.env, stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, text=True))
                left -= size
            for group in groups:
                line = group.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"client process failed to connect: {line!r}")
            time.sleep(1)
            cpu_before = _cpu_s(server.pid)
            sent = json.loads(subprocess.run(
                [sys.executable, __file__, "emitter", "--path", path, "--rate", str(rate),
                 "--duration", str(self.duration), "--redis-url", self.redis.url],
                env=self.env, capture_output=True, text=True, check=True).stdout)["sent"]
            time.sleep(2)  # let the last events arrive
            rss = _rss_mb(server.pid)
            cpu = _cpu_s(server.pid) - cpu_before
            latencies: list[float] = []
            for group in groups:
                out, _ = group.communicate("stop\n", timeout=120)
                latencies += json.loads(out.strip().splitlines()[-1])["latencies"]
        finally:
            for group in groups:
                if group.poll() is None:
                    group.kill()
            server.stop()
        latencies.sort()
        expected = sent * n_clients
        return {
            "p50": _pct(latencies, 0.50), "p95": _pct(latencies, 0.95),
            "p99": _pct(latencies, 0.99), "deliveries_per_s": len(latencies) / self.duration,
            "delivered": len(latencies) / expected if expected else 0.0, "rss_mb": rss,
            "load": os.getloadavg()[0],  # the machine is shared: read the figures with it
            "cpu_us": cpu / len(latencies) * 1e6 if latencies else float("nan"),
        }

    def task_throughput(self, events: str, tasks: int) -> float:
        """Tasks per second through one prefork worker (2 processes)."""
        from celery import Celery

        worker = self.process(f"worker-events-{events}", [
            sys.executable, "-m", "celery", "-A", "k1.celery", "worker", "--loglevel",
            "WARNING", "--concurrency", "2", "--hostname", f"bench-{events}@k1",
            "--without-mingle", "--without-gossip"], {"K1_TASK_EVENTS": events}).start()
        app = Celery("bench", broker=self.redis.url, backend=self.redis.url)
        try:
            worker.wait_until(lambda: app.control.ping(timeout=0.5), 60, "no ping")
            for _ in range(20):  # warm up both pool processes
                app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "bench"}).get(30)
            started = time.perf_counter()
            results = [app.send_task("k1.tasks.demo.flaky", kwargs={"project_id": "bench"},
                                     headers={"k1_project_id": "bench"})
                       for _ in range(tasks)]
            for result in results:
                result.get(timeout=120)
            return tasks / (time.perf_counter() - started)
        finally:
            worker.stop()

    def close(self) -> None:
        import shutil

        self.redis.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    """Resident memory of the server process (and its children, e.g. tpool threads')."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def orchestrate(args: argparse.Namespace) -> None:
    bench = Bench(args.duration, os.path.join(ROOT, "artifacts", "logs", "bench"))
    loads = ((200, 50),) if args.quick else LOADS
    print(f"# realtime bench: {args.duration:.0f} s per load, {os.cpu_count()} CPUs; goals: "
          f"{GOALS}\n", flush=True)
    header = (f"{'path':<5} {'mode':<9} {'clients':>7} {'ev/s':>5} {'p50 ms':>8} "
              f"{'p95 ms':>8} {'p99 ms':>8} {'deliv/s':>8} {'got':>6} {'RSS MB':>7} "
              f"{'load1':>5} {'srv µs/deliv':>12}")
    try:
        print(header, flush=True)
        rows = {}
        for n_clients, rate in loads:
            for path in ("bare", "k1"):
                r = bench.run(path, "eventlet", n_clients, rate)
                rows[(path, n_clients, rate)] = r
                _print_row(path, "eventlet", n_clients, rate, r)
            ratio = rows[("k1", n_clients, rate)]["p95"] / rows[("bare", n_clients, rate)]["p95"]
            print(f"      K1/bare p95 ratio at {n_clients} x {rate}/s: {ratio:.2f}", flush=True)
        if not args.quick:
            print("\n# async modes, K1 path, 200 clients x 50 events/s", flush=True)
            print(header, flush=True)
            _print_row("k1", "eventlet", 200, 50, rows[("k1", 200, 50)])
            for mode in ("gevent", "threading"):
                _print_row("k1", mode, 200, 50, bench.run("k1", mode, 200, 50))
        print("\n# task throughput, one worker (prefork, 2 processes), k1.tasks.demo.flaky;"
              " best of 2 interleaved runs each", flush=True)
        best = {"on": 0.0, "off": 0.0}
        for events in ("on", "off", "on", "off"):
            best[events] = max(best[events], bench.task_throughput(events, args.tasks))
        print(f"K1_TASK_EVENTS=on : {best['on']:7.1f} tasks/s\n"
              f"K1_TASK_EVENTS=off: {best['off']:7.1f} tasks/s\n"
              f"ratio on/off: {best['on'] / best['off']:.3f}", flush=True)
    finally:
        bench.close()


def _print_row(path: str, mode: str, n: int, rate: float, r: dict[str, float]) -> None:
    print(f"{path:<5} {mode:<9} {n:>7} {rate:>5.0f} {r['p50']:>8.1f} {r['p95']:>8.1f} "
          f"{r['p99']:>8.1f} {r['deliveries_per_s']:>8.0f} {r['delivered']:>6.1%} "
          f"{r['rss_mb']:>7.1f} {r['load']:>5.1f} {r['cpu_us']:>12.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("bare-server")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", default="eventlet")
    p = sub.add_parser("clients")
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--token")
    p.add_argument("--project")
    p = sub.add_parser("emitter")
    p.add_argument("--path", choices=("k1", "bare"), required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--redis-url", required=True)
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per load")
    parser.add_argument("--tasks", type=int, default=400, help="tasks per throughput run")
    parser.add_argument("--quick", action="store_true", help="one load per path only")
    args = parser.parse_args()
    if args.command == "bare-server":
        bare_server(args.port, args.mode, os.environ["REDIS_URL"])
    elif args.command == "clients":
        clients(args.url, args.count, args.token, args.project)
    elif args.command == "emitter":
        emitter(args.path, args.rate, args.duration, args.redis_url)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
