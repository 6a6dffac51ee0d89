"""Benchmark: one-task workflows through the K1 bridge vs a plain conductor-python worker.

    .venv/bin/python bench/conductor.py [--workflows 60] [--concurrency 1 2]

Starts its own Redis and Conductor server (SQLite, temporary data) and, in turn:

- plain:    a conductor-python worker process runs the task function itself;
- bridge-N: ``k1 conductor-worker`` hands the task to Celery, run by a worker with N
            processes (``--concurrency``); the conductor worker reports the result.

Both run the same function (``k1.conductor.render_report``), with the same poll interval
and thread count. Throughput: ``--workflows`` executions are queued first, then the
consumer (plain worker, or Celery worker) is started, and the completions are timed as it
works the backlog off. Latency: 20 executions run one after the other, end - start as
Conductor records it, and polled -> done (the task's own path, without the wait for a
poll). The ratio is bridge throughput / plain throughput. CPU per workflow of each side:
the consumer from its first completion on, the conductor worker (hand-offs, reports and
its idle polling) over the whole drain. ``--profile DIR``: py-spy records of the bridge's
processes.
"""

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# This file is bench/conductor.py: its directory on sys.path would shadow conductor-python.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
from k1.settings import conductor_cache_dir  # noqa: E402 - once ROOT is on sys.path

# The one Conductor jar cache (scripts/setup.sh fetched it there), read before K1_DATA_DIR
# points at the bench's own directory.
JAR_CACHE = ROOT / conductor_cache_dir(os.environ)
TMP = Path(os.environ.get("K1_BENCH_DIR") or tempfile.mkdtemp(prefix="k1-bench-conductor-"))
os.environ["K1_BENCH_DIR"] = str(TMP)  # the plain worker and its children share it
os.environ.setdefault("K1_SECRET_KEY", secrets.token_urlsafe(48))
os.environ["K1_DATA_DIR"] = str(TMP / "data")
os.environ["K1_LOG_LEVEL"] = "WARNING"

TASK = "k1.conductor.render_report"
PLAIN_TASK = "bench_plain_render_report"
POLL_INTERVAL_MS = 100  # the same for both workers
THREADS = 4
IDLE_SAMPLE = 1.0  # s of the poller's CPU sampled at a time before a drain
IDLE_CPU = 0.1  # CPU s/s under which the poller is idle (started: imports, connections)
STARTUP_TIMEOUT = 60  # s the poller may take to start on a loaded machine
LATENCY_RUNS = 20  # sequential workflows timed for latency
ANALYSIS = {"data_path": "s3://bench/x.csv", "profile": {"fingerprint": "ab", "score": 7}}


def plain_render_report(project_id: str, analysis: dict) -> dict:
    """The plain worker's function: the Celery task's body, called in-process."""
    from k1.conductor.tasks import render_report

    return render_report.run(project_id, analysis)


def workflow_def(name: str, task: str) -> dict:
    return {"name": name, "version": 1, "schemaVersion": 2,
            "tasks": [{"name": task, "taskReferenceName": "render", "type": "SIMPLE",
                       "inputParameters": {"project_id": "${workflow.input.project_id}",
                                           "analysis": "${workflow.input.analysis}"}}],
            "timeoutPolicy": "ALERT_ONLY", "timeoutSeconds": 0}


def start_batch(client, name: str, count: int) -> list[str]:
    return [client.start_workflow(name, {"project_id": "bench", "analysis": ANALYSIS})
            for _ in range(count)]


def wait_all(client, ids: list[str], first_done=None) -> list[dict]:
    """The workflows ``ids`` once all have ended; ``first_done(n)`` is called once, when
    the first ``n`` of them have. One call a round (the running ids of the workflow
    type): a GET per unfinished workflow every round would load the server measured.
    """
    deadline = time.monotonic() + 600
    name = client.get_workflow(ids[0])["workflowName"]
    waiting = set(ids)
    while waiting:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(ids) - len(waiting)}/{len(ids)} workflows finished")
        waiting &= set(client._call("GET", f"/workflow/running/{name}",
                                    params={"version": 1}) or ())
        if first_done is not None and len(waiting) < len(ids):
            first_done(len(ids) - len(waiting))
            first_done = None
        if waiting:
            time.sleep(0.02 if len(ids) == 1 else 0.1)
    done = {wid: client.get_workflow(wid, include_tasks=True) for wid in ids}
    failed = [w for w in done.values() if w["status"] != "COMPLETED"]
    if failed:
        raise SystemExit(f"{len(failed)} workflows did not complete")
    return list(done.values())


def drain_rate(workflows: list[dict]) -> float:
    """Workflows completed per second while a backlog was being worked off."""
    ends = sorted(w["endTime"] for w in workflows)
    return (len(ends) - 1) / ((ends[-1] - ends[0]) / 1000)


def latencies(client, name: str, count: int) -> dict:
    """End - start of ``count`` workflows run one after the other (no queueing)."""
    values, polled = [], []
    for _ in range(count):
        (workflow,) = wait_all(client, start_batch(client, name, 1))
        values.append((workflow["endTime"] - workflow["startTime"]) / 1000)
        task = workflow["tasks"][0]  # polled (startTime) to completed (endTime)
        polled.append((task["endTime"] - task["startTime"]) / 1000)
    values.sort()
    return {"p50": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))],
            "mean": statistics.fmean(values), "polled": statistics.median(polled)}


def cpu_seconds(group: int) -> float:
    """CPU time (user + system) of the live processes of process group ``group``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group:  # pgrp; utime and stime are fields 11 and 12 after it
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def settle_down(group: int) -> float:
    """Wait until the process group is done starting (its CPU use under IDLE_CPU, or
    STARTUP_TIMEOUT passed); returns its CPU seconds per second then."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        before = cpu_seconds(group)
        time.sleep(IDLE_SAMPLE)
        rate = (cpu_seconds(group) - before) / IDLE_SAMPLE
        if rate < IDLE_CPU or time.monotonic() > deadline:
            return rate


def measure(client, name: str, count: int, start_consumer,
            poller: int | None = None) -> tuple[dict, subprocess.Popen[bytes]]:
    """Queue ``count`` workflows, start the consumer, time the drain; then latencies.

    CPU per workflow, which moves less with the machine's load than the rates: the
    consumer's processes from the first completion on (its start-up is not counted), and
    the bridge's ``poller`` process group (already running) over the whole drain.
    """
    if poller:
        print(f"poller idle: {settle_down(poller) * 1000:.0f} ms CPU/s")
    polling = cpu_seconds(poller) if poller else 0.0
    backlog = start_batch(client, name, count)
    consumer = start_consumer()
    first: list[float] = []

    def first_done(finished: int) -> None:
        first.extend((finished, cpu_seconds(consumer.pid)))

    rate = drain_rate(wait_all(client, backlog, first_done))
    consumer_cpu = (cpu_seconds(consumer.pid) - first[1]) / (count - first[0])
    poller_cpu = (cpu_seconds(poller) - polling) / count if poller else 0.0
    return {"throughput": rate, "consumer_cpu": consumer_cpu, "poller_cpu": poller_cpu,
            **latencies(client, name, LATENCY_RUNS)}, consumer


def spawn(name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(TMP / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group: conductor-python's spawned pollers too."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def profile(directory: Path, name: str,
            process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    """py-spy recording ``process`` and its children into ``directory/name.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(BIN / "py-spy"), "record", "--pid", str(process.pid),
                             "--subprocesses", "--format", "raw", "--rate", "200",
                             "--output", str(directory / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=60)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy record the bridge's processes into DIR (collapsed "
                             "stacks, one file each; py-spy must be installed)")
    args = parser.parse_args()

    redis_port, conductor_port = free_port(), free_port()
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["CONDUCTOR_SERVER_URL"] = f"http://127.0.0.1:{conductor_port}/api"
    env = dict(os.environ)
    redis = spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--dir", str(TMP)], env)
    from k1.conductor.server import start_server, stop_server

    t0 = time.monotonic()
    server = start_server(JAR_CACHE, conductor_port, TMP / "conductor")
    print(f"conductor healthy in {time.monotonic() - t0:.1f} s")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        from k1.conductor.client import ConductorClient

        client = ConductorClient()
        client.register_task_defs([
            {"name": n, "retryCount": 0, "timeoutSeconds": 300, "responseTimeoutSeconds": 120}
            for n in (TASK, PLAIN_TASK)])
        client.create_workflow_def(workflow_def("bench_bridge", TASK))
        client.create_workflow_def(workflow_def("bench_plain", PLAIN_TASK))
        results = {}

        def plain_worker_process() -> subprocess.Popen[bytes]:
            return spawn("plain-worker", [sys.executable, __file__, "--plain-worker"], env)

        results["plain"], plain = measure(client, "bench_plain", args.workflows,
                                          plain_worker_process)
        stop(plain)

        poller = spawn("conductor-worker", [str(BIN / "k1"), "conductor-worker",
                                            "--no-register", "--task-type", TASK,
                                            "--threads", str(THREADS),
                                            "--poll-interval", str(POLL_INTERVAL_MS)], env)
        processes.append(poller)
        profiles = [profile(args.profile, "conductor-worker", poller)] if args.profile else []
        for concurrency in args.concurrency:
            def celery_worker(concurrency: int = concurrency) -> subprocess.Popen[bytes]:
                return spawn(f"celery-{concurrency}", [
                    str(BIN / "celery"), "-A", "k1.celery", "worker", "--loglevel",
                    "WARNING", "--concurrency", str(concurrency), "--without-mingle",
                    "--without-gossip", "--hostname", f"bench{concurrency}@k1"], env)

            def consumer(concurrency: int = concurrency) -> subprocess.Popen[bytes]:
                worker = celery_worker(concurrency)
                if args.profile:
                    profiles.append(profile(args.profile, f"celery-{concurrency}", worker))
                return worker

            results[f"bridge-{concurrency}"], worker = measure(
                client, "bench_bridge", args.workflows, consumer, poller.pid)
            for recorder in profiles[1:]:
                recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                recorder.wait(60)
            del profiles[1:]
            stop(worker)
    finally:
        for recorder in profiles:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
        for process in processes:
            stop(process)
        stop_server(server)
        stop(redis)

    plain = results["plain"]
    print(f"\nthroughput: a backlog of {args.workflows} one-task workflows worked off; "
          f"latency: {LATENCY_RUNS} workflows one after the other (end - start)\n")
    print("| run | workflows/s | ratio to plain | latency p50 | added p50 | p95 | mean "
          "| polled → done p50 | CPU/workflow: consumer | conductor worker |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        added = (r["p50"] - plain["p50"]) * 1000
        print(f"| {name} | {r['throughput']:.1f} | {r['throughput'] / plain['throughput']:.2f} "
              f"| {r['p50'] * 1000:.0f} ms | {added:+.0f} ms | {r['p95'] * 1000:.0f} ms "
              f"| {r['mean'] * 1000:.0f} ms | {r['polled'] * 1000:.0f} ms "
              f"| {r['consumer_cpu'] * 1000:.1f} ms "
              f"| {r['poller_cpu'] * 1000:.1f} ms |")


def plain_worker() -> None:
    from conductor.client.automator.task_handler import TaskHandler
    from conductor.client.configuration.configuration import Configuration
    from conductor.client.worker.worker import Worker

    worker = Worker(task_definition_name=PLAIN_TASK, execute_function=plain_render_report,
                    poll_interval=POLL_INTERVAL_MS, thread_count=THREADS)
    handler = TaskHandler(workers=[worker], scan_for_annotated_workers=False,
                          configuration=Configuration(
                              server_api_url=os.environ["CONDUCTOR_SERVER_URL"]))
    handler.start_processes()
    try:
        handler.join_processes()
    finally:
        handler.stop_processes()


if __name__ == "__main__":
    if sys.argv[1:] == ["--plain-worker"]:
        plain_worker()
    else:
        main()
