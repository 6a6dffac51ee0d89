"""Flow-control benchmark, two phases in one run:

- ``limits``: the cost of a limit check per task (throughput of ``k1.tasks.demo.flaky``
  under a limit that never binds, against none);
- ``fairness``: the wait from send to start of project B's tasks (one every 100 ms) while
  project A's flood is queued, with the users' queue fair and not (the producer files by
  project or not: the workers fetch the same way either way); and what fairness costs a
  lone project: its backlog's throughput through the worker, and the fetch script's own
  time per message, fair against plain.

    .venv/bin/python -m bench.flow [--tasks 2000] [--flood 2000] [--others 50]
                                   [--phase limits|fairness]

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

QUEUE = "celery"
HOLD = "tests.flow.hold"  # records its start (Redis' clock) and task id under a tag
FLOOD_MS = 5  # each of project A's tasks
OTHERS_EVERY = 0.1  # s between two of project B's tasks
FETCHES = 5000  # messages of one project per fetch-cost round
WORKER = "bench@k1"
ROUNDS = 2  # interleaved rounds of the cost figures, best of each kept (a shared machine)

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


def send_hold(fair: bool, project: str, tag: str, count: int, ms: int = 0,
              every: float = 0.0) -> dict[str, float]:
    """``count`` tasks of ``project`` (K1's project header on each), filed by project only
    if ``fair``; returns task id -> when it was sent."""
    from kombu import Producer

    from k1 import headers
    from k1.celery import app

    sent: dict[str, float] = {}
    options = {"fair_queues": [QUEUE] if fair else []}
    with app.connection_for_write(transport_options=options) as connection:
        producer = Producer(connection)
        for n in range(count):
            if every and n:
                time.sleep(every)
            at = time.time()
            task_id = app.send_task(HOLD, kwargs={"project_id": project, "tag": tag, "ms": ms},
                                    headers={headers.PROJECT: project}, producer=producer).id
            sent[task_id] = at
    return sent


def starts(tag: str) -> dict[str, float]:
    """Task id -> start time of the runs recorded under ``tag``."""
    from k1.connections import get_redis
    from tests.flow.tasks import RUNS

    found = {}
    for line in get_redis().lrange(RUNS.format(tag), 0, -1):
        start, _, _, _, task_id = line.split()
        found[task_id] = float(start)
    return found


def wait_runs(tag: str, count: int, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while len(found := starts(tag)) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(found)} of {count} runs of {tag} in {timeout}s")
        time.sleep(0.05)
    return found


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def fairness(flood: int, others: int) -> None:
    print(f"\n## fairness: A floods {flood} tasks of {FLOOD_MS} ms, then B sends {others}, "
          f"one every {OTHERS_EVERY * 1000:.0f} ms")
    for fair in (True, False):
        flood_tag, other_tag = uuid.uuid4().hex, uuid.uuid4().hex
        send_hold(fair, "a", flood_tag, flood, ms=FLOOD_MS)
        sent = send_hold(fair, "b", other_tag, others, every=OTHERS_EVERY)
        started = wait_runs(other_tag, others, timeout=600)
        waits = [started[task_id] - at for task_id, at in sent.items()]
        wait_runs(flood_tag, flood, timeout=600)  # the flood drains before the next round
        print(f"fair {'on ' if fair else 'off'}  B's wait to start: p50 "
              f"{percentile(waits, 0.5):6.2f} s  p95 {percentile(waits, 0.95):6.2f} s  "
              f"max {max(waits):6.2f} s")
    print(f"\n## fairness' cost for a lone project: {flood} tasks of 0 ms through the worker; "
          f"the fetch alone, {FETCHES} messages; best of {ROUNDS}")
    from k1.celery import app

    rates: dict[bool, list[float]] = {True: [], False: []}
    costs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for fair in (True, False) * ROUNDS:
        tag = uuid.uuid4().hex
        app.control.cancel_consumer(QUEUE, destination=[WORKER], reply=True)
        send_hold(fair, "solo", tag, flood)  # queued whole before the worker takes any
        started = time.time()
        app.control.add_consumer(QUEUE, destination=[WORKER], reply=True)
        wait_runs(tag, flood, timeout=600)
        rates[fair].append(flood / (time.time() - started))
        costs[fair].append(fetch_cost(fair))
    for fair in (True, False):
        client_us = min(cost[0] for cost in costs[fair])
        script_us = min(cost[1] for cost in costs[fair])
        print(f"fair {'on ' if fair else 'off'}  {max(rates[fair]):7.0f} tasks/s through the "
              f"worker (from a queued backlog)   fetch {client_us:6.1f} us/message, of which "
              f"the script in Redis {script_us:5.1f} us")
    print(f"ratio on/off: {max(rates[True]) / max(rates[False]):.2f} (throughput)")


def fetch_cost(fair: bool) -> tuple[float, float]:
    """The time per message fetched from a backlog of one project, as the fetching client
    sees it and inside Redis (the fetch script's own, from Redis' command statistics; the
    worker's few idle fetches on its own queue are counted in too)."""
    from kombu import Connection, Exchange, Producer, Queue

    from k1 import broker, headers

    name = f"bench-fetch-{uuid.uuid4().hex[:6]}"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    options = {"fair_queues": [name] if fair else []}
    with Connection(os.environ["REDIS_URL"], transport=broker.Transport,
                    transport_options=options) as connection:
        producer = Producer(connection.default_channel, exchange=queue.exchange,
                            routing_key=name)
        with producer.batch(max_size=500):
            for _ in range(FETCHES):
                producer.publish({"x": 1}, declare=[queue], serializer="json",
                                 headers={headers.PROJECT: "solo"})
        channel = connection.default_channel
        client = channel.client
        client.config_resetstat()
        started = time.perf_counter()
        while channel._fetch([name], record=False) is not None:
            pass
        elapsed = time.perf_counter() - started
        script = client.info("commandstats").get("cmdstat_evalsha", {})
        return elapsed / FETCHES * 1e6, float(script.get("usec_per_call", 0.0))


def limit_cost(tasks: int, rounds: int) -> None:
    from k1.flow import limits

    print(f"\n## limit check: {tasks} tasks per run, best of {rounds}")
    throughput(200)  # warm up the pool processes
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, body in NEVER_BINDING.items():
            limits.delete_runtime("bench")
            if body is not None:
                limits.save_runtime(limits.Limit.from_dict("bench", body))
            time.sleep(limits.REFRESH_INTERVAL + 0.5)  # every process has seen it
            results.setdefault(label, []).append(throughput(tasks))
    plain = max(results["none"])
    for label, rates in results.items():
        print(f"{label:32s} {max(rates):8.0f} tasks/s   ratio {max(rates) / plain:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--others", type=int, default=50)
    parser.add_argument("--phase", choices=("limits", "fairness"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="k1-bench-"))
    logs = base / "logs"
    logs.mkdir(parents=True)
    redis_server = RedisServer(free_port(), base / "redis", logs).start()
    os.environ.update(REDIS_URL=redis_server.url, K1_SECRET_KEY="bench-" + uuid.uuid4().hex * 2,
                      K1_DATA_DIR=str(base / "data"), K1_TASK_EVENTS="off")
    from k1.celery import app

    worker = Process("bench-worker", [
        str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--concurrency", "2",
        "--loglevel", "WARNING", "--hostname", WORKER, "--without-mingle",
        "--without-gossip", "--include", "tests.flow.tasks"], os.environ, logs).start()
    try:
        worker.wait_until(lambda: app.control.ping(destination=[WORKER], timeout=0.5), 60,
                          "did not answer ping")
        print(f"# K1 flow benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        if args.phase in (None, "limits"):
            limit_cost(args.tasks, args.rounds)
        if args.phase in (None, "fairness"):
            fairness(args.flood, args.others)
    finally:
        worker.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
