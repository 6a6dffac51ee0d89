"""A K1 platform of its own for one fault scenario, and the load that is counted through it.

Each scenario breaks something (Redis, PostgreSQL, a worker, beat, the web process), so it
runs on servers and processes of its own, never the session's shared ones::

    with Platform("redis-restart", tmp_path) as platform:
        platform.worker("w1")
        load = Load(platform, "acme", count=2000, fail_times=1)
        load.send()
        platform.redis.stop(); platform.redis.start()       # the fault
        load.wait_done(timeout=120)
        report(load.outcome(...))

Tasks are ``k1.tasks.demo.flaky`` calls, each with its own ``key`` (its idempotency key),
so every task is counted by key: completed (its result says SUCCESS), lost (never
completed), dead (a dead letter), and how often its side effect happened.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from k1.broker import waiting_lists
from tests.conftest import LOGS, PORTS, k1_process
from tests.support import ROOT, VENV_BIN, Process, RedisServer, free_port, run_k1, wait_for

FIGURES = ROOT / "artifacts" / "fault"  # one JSON per scenario, summed up in docs/reliability.md
QUEUE = "celery"  # the default queue: the platform has nothing else on its Redis


class Platform:
    """Its own Redis (AOF, fsync always) and whatever processes the scenario starts."""

    def __init__(self, name: str, tmp: Path, *, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.redis = RedisServer(free_port(), tmp / "redis", LOGS)
        self.env = {"REDIS_URL": self.redis.url, **(env or {})}
        self.processes: list[Process] = []
        self.client: Celery | None = None

    def __enter__(self) -> Platform:
        self.redis.start()
        self.client = Celery("k1", broker=self.redis.url, backend=self.redis.url)
        self.client.conf.update(task_serializer="json", accept_content=["json"],
                                result_serializer="json", broker_connection_retry=True)
        return self

    def __exit__(self, *_: object) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.client is not None:
            self.client.close()
        self.redis.stop()

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True, socket_timeout=10)

    def process(self, label: str, *argv: str, env: dict[str, str] | None = None) -> Process:
        process = k1_process(f"{self.name}-{label}", *argv, env={**self.env, **(env or {})})
        self.processes.append(process)
        return process.start()

    def worker(self, label: str, *, concurrency: int = 2, wait: bool = True) -> Process:
        """A prefork worker node named ``<label>@k1fault``, answering pings."""
        process = self.process(
            label, str(VENV_BIN / "celery"), "-A", "k1.celery", "worker", "--loglevel", "INFO",
            "--concurrency", str(concurrency), "--hostname", f"{label}@k1fault",
            "--without-mingle", "--without-gossip")
        if wait:
            self.wait_ping(process, label)
        return process

    def wait_ping(self, process: Process, label: str, timeout: float = 60) -> None:
        assert self.client is not None
        process.wait_until(lambda: self.client.control.ping(destination=[f"{label}@k1fault"],
                                                            timeout=0.5),
                           timeout, "did not answer ping")

    def web(self, label: str = "web", port: int | None = None) -> tuple[Process, str]:
        import requests

        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        process = self.process(label, str(VENV_BIN / "python"), "-m", "k1.web",
                               env={"PORT": str(port)})
        process.wait_until(lambda: requests.get(f"{url}/api/health", timeout=2).ok, 60,
                           "health never answered 200")
        return process, url

    def conductor_worker(self, label: str = "conductor") -> Process:
        """``k1 conductor-worker`` (the Procfile's ``conductor``), polling once it returns;
        the workflow files are registered first with ``k1 workflows register``. Needs
        CONDUCTOR_SERVER_URL in the platform's ``env``.
        """
        registered = run_k1("workflows", "register", env=self.env)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        process = self.process(label, str(VENV_BIN / "k1"), "conductor-worker",
                               "--no-register")
        process.wait_until(lambda: "conductor worker polling" in process.log_tail(400), 60,
                           "did not start polling")
        return process


def pool_children(process: Process) -> list[int]:
    """The pool processes of a prefork worker (the children of its main process)."""
    path = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def kill_quietly(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Outcome:
    """What became of a scenario's load; written to artifacts/fault/<scenario>.json."""

    scenario: str
    load: str
    fault: str
    sent: int
    completed: int
    lost: int
    dead: int
    duplicated_effects: int | None  # None: this scenario has no side effect to count
    recovery_s: float | None
    extra: dict[str, Any] = field(default_factory=dict)


def report(outcome: Outcome) -> Outcome:
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{outcome.scenario}.json").write_text(json.dumps(asdict(outcome), indent=2))
    print(f"\nfault {outcome.scenario}: {json.dumps(asdict(outcome))}")
    return outcome


class Load:
    """``count`` flaky tasks for ``project``, each with its own key; counted by key."""

    def __init__(self, platform: Platform, project: str, count: int, *, fail_times: int = 0,
                 sleep_ms: int = 0, permanent: bool = False, tag: str | None = None) -> None:
        self.platform, self.project, self.count = platform, project, count
        self.kwargs = {"fail_times": fail_times, "sleep_ms": sleep_ms, "permanent": permanent}
        self.tag = tag or uuid.uuid4().hex[:8]  # every key starts with it
        self.task_ids: dict[str, str] = {}  # key -> task id

    def keys(self) -> Iterator[str]:
        return iter(self.task_ids)

    def send(self, count: int | None = None) -> list[str]:
        """Send ``count`` more tasks (default: those of the load not sent yet); returns
        their task ids."""
        assert self.platform.client is not None
        sent = []
        with self.platform.client.producer_or_acquire() as producer:
            for _ in range(self.count - len(self.task_ids) if count is None else count):
                key = f"{self.tag}-{len(self.task_ids)}"
                result = self.platform.client.send_task(
                    "k1.tasks.demo.flaky", producer=producer,
                    kwargs={"project_id": self.project, "key": key, **self.kwargs},
                    headers={"k1_project_id": self.project, "k1_idempotency_key": key})
                self.task_ids[key] = result.id
                sent.append(result.id)
        return sent

    def states(self) -> dict[str, str]:
        """key -> Celery state (PENDING when no result is stored yet)."""
        client = self.platform.redis_client()
        keys = list(self.task_ids)
        states: dict[str, str] = {}
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            raw = client.mget([f"celery-task-meta-{self.task_ids[k]}" for k in chunk])
            for key, value in zip(chunk, raw, strict=True):
                states[key] = json.loads(value)["status"] if value else "PENDING"
        return states

    def completed(self) -> int:
        return sum(state == "SUCCESS" for state in self.states().values())

    def wait_done(self, timeout: float, states: tuple[str, ...] = ("SUCCESS",)) -> float:
        """Wait until every task reached one of ``states``; returns when (monotonic)."""
        def done() -> bool:
            return all(state in states for state in self.states().values())

        wait_for(done, timeout=timeout, interval=0.5,
                 message=lambda: f"{self.summary()} after {timeout}s")
        return time.monotonic()

    def summary(self) -> str:
        counts: dict[str, int] = {}
        states = self.states()
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        unfinished = [self.task_ids[k] for k, state in states.items() if state != "SUCCESS"]
        return f"{len(self.task_ids)} tasks: {counts}; {self.whereabouts(unfinished[:20])}"

    def whereabouts(self, task_ids: list[str]) -> dict[str, str]:
        """Where the broker holds each task's message: queued, unacked, or nowhere."""
        client = self.platform.redis_client()
        lists = waiting_lists(client, [QUEUE])[QUEUE]  # the fair queue's sub-queues too
        queued = "\n".join(m for name in lists for m in client.lrange(name, 0, -1))
        unacked = "\n".join(client.hvals("unacked"))
        return {task_id: "queued" if task_id in queued else "unacked" if task_id in unacked
                else "nowhere" for task_id in task_ids}

    def runs(self, key: str) -> int:
        """How many times the task with ``key`` ran its body (flaky keeps a list)."""
        return int(self.platform.redis_client().llen(f"k1:flaky:{key}:runs"))

    def effects(self) -> dict[str, int]:
        """key -> how many times its side effect happened."""
        client = self.platform.redis_client()
        pipe = client.pipeline(transaction=False)
        for key in self.task_ids:
            pipe.get(f"k1:flaky:{key}")
        return {key: int(value or 0) for key, value in zip(self.task_ids, pipe.execute(),
                                                            strict=True)}


__all__ = ["PORTS", "Load", "Outcome", "Platform", "kill_quietly", "pool_children", "report"]
