"""Scheduling benchmark: fire-time drift, a 10,000-fire burst, change latency, beat's cost.

    .venv/bin/python bench/scheduling.py [--schedules 200] [--every 5] [--seconds 60]
                                         [--phases drift,change,burst,big]

Starts its own Redis, a Celery worker, ``k1 beat`` and the web process on free loopback
ports (logs in artifacts/logs/bench-*), then measures:

1. drift: ``--schedules`` schedules firing every ``--every`` s, staggered evenly over the
   period for ``--seconds`` s, then all due at the same instants for half as long; task
   start minus due time (recorded by the worker, k1.scheduling.history), and beat's send
   lateness (fired minus due), p50/p95/p99;
2. API change to effect: PATCH a far-off schedule to ``every: 1`` (and pause a firing one)
   through the real API, and time until beat acts on it;
3. burst: 10,000 schedules due at the same instant (as at a minute boundary): how late
   beat sent the first, the median and the last of them (fired minus due);
4. 10,000 schedules: the K1 scheduler's tick time (the real ``K1Scheduler.tick`` against
   Redis, in a probe process shaped like beat) and beat's resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import VENV_BIN, Process, RedisServer, free_port, wait_for  # noqa: E402

LOGS = ROOT / "artifacts" / "logs"
BASE = Path(tempfile.mkdtemp(prefix="k1-bench-sched-"))
BIG = 10_000  # schedules for the tick/memory measurement
BIG_EVERY = 3600  # s; staggered, so about BIG / BIG_EVERY (~3) fires per second


def configure_environment() -> dict[str, str]:
    env = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "K1_SECRET_KEY": "bench-" + uuid.uuid4().hex + uuid.uuid4().hex,
        "K1_DATA_DIR": str(BASE / "data"),
        "K1_HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "K1_BEAT_MAX_LOOP_INTERVAL": "1",
        "K1_BEAT_LOCK_TIMEOUT": "10",
        "K1_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    return env


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"n": len(ordered), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99),
            "max": ordered[-1]}


def ms(figures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f}" if k == "n" else f"{k} {v * 1000:.1f} ms"
                     for k, v in figures.items())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def beat_child_pid(supervisor: Process) -> int:
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children").read_text().split()
    return int(children[0])


def fires_of(name: str) -> list[dict[str, Any]]:
    """The recorded fires of the bench project's schedule ``name``, newest first."""
    from k1.scheduling.entry import schedule_id
    from k1.scheduling.history import recent_fires

    return recent_fires(schedule_id("bench", name))


def drift(store, schedules: int, every: int, seconds: int, aligned: bool) -> None:
    """Fires of ``schedules`` schedules; staggered evenly over ``every``, or all at once."""
    from datetime import UTC, datetime, timedelta

    from k1.celery import app
    from k1.connections import get_redis
    from k1.scheduling.entry import K1Entry
    from k1.scheduling.history import DRIFT_KEY

    template = store.validate({"name": "drift", "task": "k1.tasks.demo.flaky",
                               "every": every, "project_id": "bench"})
    names = [f"drift-{i:04d}" for i in range(schedules)]
    now = datetime.now(UTC) + timedelta(seconds=1)
    for i, name in enumerate(names):
        offset = 0 if aligned else every * i / schedules
        K1Entry.from_spec(replace(template, name=name), app,
                          last_run_at=now - timedelta(seconds=offset)).save()
    get_redis().delete(DRIFT_KEY)
    time.sleep(seconds)
    for name in names:
        store.pause(name)
    time.sleep(3)  # the last tasks start
    starts = [float(v) for v in get_redis().lrange(DRIFT_KEY, 0, -1)]
    sends = [f["fired_at"] - f["due_at"] for n in names for f in fires_of(n)
             if f["task_id"]]
    missed = sum(f["due_count"] - 1 for n in names for f in fires_of(n))
    how = "all due together" if aligned else f"staggered over {every}s"
    print(f"drift, {schedules} schedules every {every}s ({how}) for {seconds}s:")
    print(f"  task start - due:  {ms(percentiles(starts))}")
    print(f"  beat send - due:   {ms(percentiles(sends))}")
    print(f"  missed fire times: {missed}")
    for name in names:
        store.delete(name)


def change_latency(web_url: str, token: str, rounds: int = 20) -> None:
    import requests


    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    noticed, paused = [], []
    for i in range(rounds):
        name = f"change-{i:02d}"
        session.post(f"{web_url}/api/scheduler/jobs", json={
            "name": name, "task": "k1.tasks.demo.flaky", "every": 3600, "project_id": "bench",
        }).raise_for_status()
        response = session.patch(f"{web_url}/api/scheduler/jobs/{name}", json={"every": 1})
        response.raise_for_status()
        first = wait_for(lambda n=name: fires_of(n), timeout=15, interval=0.02,
                         message=f"{name} never fired")[-1]
        noticed.append(first["fired_at"] - first["due_at"])  # the change's first due time
        wait_for(lambda n=name: len(fires_of(n)) >= 2, timeout=10, interval=0.05,
                 message=f"{name} fired once only")
        asked = time.time()
        session.patch(f"{web_url}/api/scheduler/jobs/{name}",
                      json={"enabled": False}).raise_for_status()
        time.sleep(2.5)
        last = max(f["fired_at"] for f in fires_of(name))
        paused.append(max(0.0, last - asked))
        session.delete(f"{web_url}/api/scheduler/jobs/{name}")
    print(f"API change to effect ({rounds} rounds, real web process):")
    print(f"  PATCH every 3600 -> 1, first fire vs its due time: {ms(percentiles(noticed))}")
    print(f"  PATCH enabled false, last fire after the PATCH:    {ms(percentiles(paused))}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (load-independent cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(store, supervisor: Process, count: int = BIG) -> None:
    """``count`` schedules all due at one instant, sent by the running beat."""
    from datetime import UTC, datetime, timedelta

    from redbeat.schedulers import ensure_conf

    from k1.celery import app
    from k1.connections import get_redis
    from k1.scheduling.entry import K1Entry, entry_key, schedule_id
    from k1.scheduling.history import FIRE_LOG_KEY

    template = store.validate({"name": "burst", "task": "k1.tasks.demo.flaky",
                               "every": BIG_EVERY, "project_id": "bench"})
    names = [f"burst-{i:05d}" for i in range(count)]
    due = datetime.now(UTC) + timedelta(seconds=10 + count / 500)  # after they are written
    client = get_redis()
    pipe = client.pipeline(transaction=False)
    for name in names:  # what K1Entry.save does, in one pipeline
        entry = K1Entry.from_spec(replace(template, name=name), app,
                                  last_run_at=due - timedelta(seconds=BIG_EVERY))
        pipe.hset(entry.key, "definition", entry.definition())
        pipe.hset(entry.key, "meta", entry.encoded_meta())
        pipe.zadd(ensure_conf(app).schedule_key, {entry.key: entry.score})
    pipe.execute()
    assert datetime.now(UTC) < due, "writing the schedules took longer than planned"
    # The worker stops consuming meanwhile: on 2 shared cores its 10,000 tasks would
    # compete with beat, and this measures beat (the tasks are purged afterwards).
    app.control.cancel_consumer(app.conf.task_default_queue, destination=["bench@k1"],
                                reply=True, timeout=5)
    beat_pid = beat_child_pid(supervisor)
    cpu_before = cpu_seconds(beat_pid)
    logs = [FIRE_LOG_KEY.format(schedule_id("bench", name)) for name in names]

    def fired() -> list[dict[str, Any]]:
        pipe = client.pipeline(transaction=False)
        for log in logs:
            pipe.lindex(log, 0)
        return [json.loads(item) for item in pipe.execute() if item]

    seen = wait_for(lambda: len(found := fired()) == count and found,
                    timeout=(due - datetime.now(UTC)).total_seconds() + 120, interval=0.5,
                    message=lambda: f"{len(fired())} of {count} burst schedules fired")
    cpu = cpu_seconds(beat_pid) - cpu_before
    late = percentiles([f["fired_at"] - f["due_at"] for f in seen])
    print(f"burst, {count} schedules due at the same instant "
          f"(load average {os.getloadavg()[0]:.1f}):")
    print(f"  beat CPU: {cpu:.2f} s, {cpu / count * 1000:.2f} ms per fire "
          f"(~{count / max(cpu, 1e-3):.0f} fires/s on a core of its own)")
    print(f"  beat send - due: first {min(f['fired_at'] - f['due_at'] for f in seen):.3f} s, "
          f"p50 {late['p50']:.3f} s, p99 {late['p99']:.3f} s, last {late['max']:.3f} s "
          f"({count / max(late['max'], 1e-3):.0f} fires/s); "
          f"missed fire times: {sum(f['due_count'] - 1 for f in seen)}")
    pipe = client.pipeline(transaction=False)
    for name in names:
        key = entry_key(schedule_id("bench", name))
        pipe.zrem(ensure_conf(app).schedule_key, key)
        pipe.delete(key, FIRE_LOG_KEY.format(schedule_id("bench", name)))
    pipe.execute()
    app.control.purge()  # the 10,000 tasks would load the next phases' machine
    app.control.add_consumer(app.conf.task_default_queue, destination=["bench@k1"],
                             reply=True, timeout=5)


def big_schedule(store, supervisor: Process, seconds: int = 40) -> None:
    from datetime import UTC, datetime, timedelta

    from redbeat.schedulers import ensure_conf

    from k1.celery import app
    from k1.connections import get_redis
    from k1.scheduling.entry import K1Entry

    now = datetime.now(UTC)
    started = time.monotonic()
    template = store.validate({"name": "big", "task": "k1.tasks.demo.flaky",
                               "every": BIG_EVERY, "project_id": "bench"})
    for i in range(BIG):
        spec = replace(template, name=f"big-{i:05d}")
        anchor = now - timedelta(seconds=BIG_EVERY * i / BIG)  # staggered over one period
        K1Entry.from_spec(spec, app, last_run_at=anchor).save()
    print(f"10,000 schedules (every {BIG_EVERY}s, staggered; ~{BIG / BIG_EVERY:.0f} fires/s):")
    print(f"  created in {time.monotonic() - started:.1f}s")
    time.sleep(seconds)  # the running beat works through them
    entries = len(get_redis().zrange(ensure_conf(app).schedule_key, 0, -1))
    print(f"  celery beat RSS after {seconds}s: {rss_mib(beat_child_pid(supervisor)):.1f} MiB "
          f"({entries} entries)")
    supervisor.stop()  # the probe alone from here
    probe = subprocess.run([sys.executable, __file__, "--tick-probe", str(seconds)],
                           capture_output=True, text=True, env=dict(os.environ), check=True)
    figures = json.loads(probe.stdout.strip().splitlines()[-1])
    per_fire = figures["busy"] / max(1, figures["fired"])
    print(f"  beat loop (probe, {figures['ticks']} ticks, {figures['fired']} fires): "
          f"tick {ms(figures['tick'])}; {per_fire * 1000:.1f} ms per fire")
    print(f"  probe RSS: {figures['rss_mib']:.1f} MiB; load average {os.getloadavg()[0]:.1f}")


def tick_probe(seconds: int) -> None:
    """Run the real K1Scheduler loop (as beat does) for ``seconds``; print JSON figures."""
    import logging
    from types import SimpleNamespace

    from redbeat.schedulers import acquire_distributed_beat_lock, ensure_conf

    from k1.celery import app
    from k1.scheduling.beat import K1Scheduler

    logging.disable(logging.INFO)
    app.loader.init_worker()
    scheduler = K1Scheduler(app, lock_key=ensure_conf(app).lock_key + ":probe")
    acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=scheduler))
    fired = 0
    original = scheduler.fire

    def counting_fire(*args, **kwargs):
        nonlocal fired
        fires = original(*args, **kwargs)
        fired += len(fires)
        return fires

    scheduler.fire = counting_fire
    ticks: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        interval = scheduler.tick()
        ticks.append(time.perf_counter() - started)
        if interval > 0:
            time.sleep(interval)
    scheduler.close()
    print(json.dumps({"ticks": len(ticks), "fired": fired, "tick": percentiles(ticks),
                      "busy": sum(ticks),
                      "rss_mib": rss_mib(os.getpid())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", type=int, default=200)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--phases", default="drift,change,burst,big")
    parser.add_argument("--tick-probe", type=int, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.tick_probe is not None:
        tick_probe(options.tick_probe)
        return

    env = configure_environment()
    LOGS.mkdir(parents=True, exist_ok=True)
    port = int(env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
    redis_server = RedisServer(port, BASE / "redis", LOGS).start()
    processes: list[Process] = []
    try:
        from k1.auth import create_token
        from k1.celery import app
        from k1.scheduling import ScheduleStore

        worker = Process("bench-worker", [str(VENV_BIN / "celery"), "-A", "k1.celery", "worker",
                                          "--loglevel", "WARNING", "--concurrency", "2",
                                          "--hostname", "bench@k1", "--without-mingle",
                                          "--without-gossip"], os.environ, LOGS).start()
        processes.append(worker)
        beat = Process("bench-beat", [str(VENV_BIN / "k1"), "beat"], os.environ, LOGS).start()
        processes.append(beat)
        web_url = f"http://127.0.0.1:{env['PORT']}"
        web = Process("bench-web", [sys.executable, "-m", "k1.web"], os.environ, LOGS).start()
        processes.append(web)
        worker.wait_until(lambda: app.control.ping(destination=["bench@k1"], timeout=0.5), 60,
                          "did not answer ping")
        import requests

        web.wait_until(lambda: requests.get(f"{web_url}/api/health", timeout=2).status_code
                       in (200, 503), 60, "never answered")
        from redbeat.schedulers import ensure_conf

        from k1.connections import get_redis

        beat.wait_until(lambda: get_redis().exists(ensure_conf(app).lock_key), 60,
                        "never took the lock")
        store = ScheduleStore()
        print(f"K1 scheduling benchmark ({os.cpu_count()} CPUs, beat loop 1 s, lock 10 s, "
              f"load average {os.getloadavg()[0]:.1f})")
        phases = set(options.phases.split(","))
        if "drift" in phases:
            drift(store, options.schedules, options.every, options.seconds, aligned=False)
            drift(store, options.schedules, options.every, options.seconds // 2, aligned=True)
        if "change" in phases:
            change_latency(web_url, create_token("bench", ["*"], secret=env["K1_SECRET_KEY"],
                                                 ttl=3600))
        if "burst" in phases:
            burst(store, beat)
        if "big" in phases:
            big_schedule(store, beat)
    finally:
        for process in reversed(processes):
            process.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
