"""Scale out on one machine, as dynos would run: the Procfile under honcho with two of each
process that scales (web, worker, beat, recorder, conductor), configured by the
environment alone, on a Redis of its own, a fresh PostgreSQL database and the session's
Conductor server.

What must hold whichever web process a client or a request reaches:

- a Socket.IO client (WebSocket) on either web process receives every event of its
  project exactly once, and a client of another project none of them;
- ``/api/metrics`` and ``/metrics`` say the same from both, and count each event once;
- with two beats, an every-second schedule fires once per due time, no gap, no double,
  and the tasks run on both worker nodes (distinct node names);
- workflows started on either web process complete through the two Conductor workers,
  each Conductor task handed to Celery once;
- no sticky sessions: a token got from one web process works on the other, whose
  WebSocket clients receive the events of requests made to the first; a long-polling
  session lives in one process only (what the load balancer must know, docs/deploy.md).

"Nothing more arrived" is proven with a marker sent through the platform's Redis after
the awaited events (tests.events.sockets.drain), never with a sleep.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from k1.auth import create_signin_token, create_token
from k1.scheduling.entry import schedule_id
from k1.scheduling.history import FIRE_LOG_KEY
from k1.web.realtime import METRICS_INTERVAL
from tests.conductor.conftest import conductor_server  # noqa: F401 - the session's server
from tests.conftest import API, BASE, LOGS
from tests.events.sockets import Listener, drain, marker_index
from tests.ops.support import fresh_database, honcho, procfile_env
from tests.support import Process, RedisServer, free_port, run_k1, wait_for

pytestmark = pytest.mark.slow

SECRET = "scale-secret-" + uuid.uuid4().hex + uuid.uuid4().hex
SCALE = {"web": 2, "worker": 2, "beat": 2, "recorder": 2, "conductor": 2}
USER = "ada"
FLAKY = "k1.tasks.demo.flaky"
START_TIMEOUT = 240  # s for ten processes (and their pollers, pool children) on 2 cores
DONE_TIMEOUT = 120  # s for a batch, a schedule window or a workflow to complete
TASKS = 80  # the batch: ~400 events, well inside the run time budget on 2 cores
RETRY_EVERY = 4  # every 4th task of the batch fails once: retries (ETA path) too
FIRES = 12  # due times of the every-second schedule looked at (the fire log keeps 20)
# A node holds at most its concurrency (2, prefetch 1 with acks_late) of tasks: tasks this
# long, more at once than one node holds, must run on both nodes. Without it the lighter
# load may all land on one (seen: 12 one-per-second fires, all on worker.2).
HOLD_MS = 2_500
HELD = 4  # the batch's first tasks hold their slots: more than one node's 2
# honcho's log: "07:50:01 worker.2   | <the process's line>", and its own lines
# "07:49:58 system     | worker.2 started (pid=4242)".
# Two ``metrics`` broadcasts come at least the broadcaster's lease (0.9 x 5 s) apart, minus
# a clock's tick; two web processes each sending its own would come closer.
MIN_BROADCAST_GAP = METRICS_INTERVAL * 0.9 - 0.1
HONCHO_LINE = re.compile(r"^\S+ (?P<process>[a-z]+\.\d+|system)\s+\| (?P<text>.*)$")
STARTED = re.compile(r"^(?P<process>[a-z]+\.\d+) started \(pid=\d+\)$")


@dataclass
class Cluster:
    app: Process
    redis: RedisServer
    webs: tuple[str, str]
    nodes: set[str]  # the worker nodes' names, as they answered a ping

    def api(self, web: int, token: str) -> API:
        return API(self.webs[web], token)

    def lines(self, needle: str) -> list[tuple[str, str]]:
        """``(process, text)`` of every line of honcho's log that contains ``needle``."""
        found = []
        for line in self.app.log_path.read_text(errors="replace").splitlines():
            match = HONCHO_LINE.match(line)
            if match and needle in match["text"]:
                found.append((match["process"], match["text"]))
        return found

    def started(self) -> set[str]:
        """The processes honcho started."""
        return {m["process"] for _, text in self.lines(" started (pid=")
                if (m := STARTED.match(text))}

    def check_running(self) -> None:
        """honcho stops every process once one exits: it must still run."""
        assert self.app.alive(), f"a process exited; honcho's log:\n{self.app.log_tail(80)}"


def token(*projects: str) -> str:
    return create_token(USER, list(projects), secret=SECRET, ttl=900)


def free_port_pair() -> int:
    """A port whose successor is free too: honcho gives web.2 the port after web.1's."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise AssertionError("no two consecutive free ports")


@pytest.fixture(scope="module")
def cluster(conductor_server, external_service: str,  # noqa: F811
            services: dict[str, object]) -> Iterator[Cluster]:
    redis_server = RedisServer(free_port(), BASE / "scale-redis", LOGS).start()
    env = procfile_env(redis_url=redis_server.url, database_url=fresh_database("k1_scale"),
                       conductor_url=conductor_server.api_url, external_url=external_service,
                       secret=SECRET, K1_DATA_DIR=str(BASE / "scale-data"),
                       # The batch is one user's TASKS posts at once: above the default
                       # per-user write limit (50/s) on a fast machine, which is not
                       # what this test is about (tests/web/test_security.py is).
                       K1_API_WRITE_LIMIT="1000/second")
    release = run_k1("db", "upgrade", env=env, inherit=False, timeout=120)
    assert release.returncode == 0, release.stdout + release.stderr
    port = free_port_pair()
    app = honcho("scale", env, port, *SCALE, concurrency=SCALE).start()
    webs = (f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}")
    celery = Celery("k1", broker=redis_server.url)
    try:
        for web in webs:
            app.wait_until(lambda web=web: requests.get(f"{web}/api/health", timeout=3).ok,
                           START_TIMEOUT, f"{web} never reported every dependency up")

        def nodes() -> set[str] | None:
            names = {name for reply in celery.control.ping(timeout=1) for name in reply}
            return names if len(names) == SCALE["worker"] else None

        found = app.wait_until(nodes, START_TIMEOUT, "two worker nodes never answered ping")
        cluster = Cluster(app, redis_server, webs, found)
        app.wait_until(lambda: {p for p, _ in cluster.lines("conductor worker polling")}
                       == {"conductor.1", "conductor.2"}, START_TIMEOUT,
                       "both Conductor workers never started polling")
        app.wait_until(lambda: cluster.lines("beat: Acquired lock"), START_TIMEOUT,
                       "no beat ever acquired the lock")
        yield cluster
    finally:
        celery.close()
        app.stop(timeout=40)
        redis_server.stop()


def test_the_procfile_runs_two_of_each_with_distinct_worker_nodes(cluster: Cluster) -> None:
    cluster.check_running()
    expected = {f"{kind}.{n}" for kind, count in SCALE.items() for n in range(1, count + 1)}
    assert cluster.started() == expected
    # The worker line names each node after its dyno (honcho's process name here).
    assert {node.split("@")[0] for node in cluster.nodes} == {"worker.1", "worker.2"}, \
        cluster.nodes
    # Both Conductor workers registered workflows/ at once, neither failed: the loser of
    # a create got 500 "already exists" and stopped registering the rest (every run).
    assert not cluster.lines("workflows not registered"), cluster.lines("not registered")
    registered = {process for process, _ in cluster.lines("k1 conductor-worker: workflow ")}
    assert registered == {"conductor.1", "conductor.2"}, cluster.lines("conductor-worker")
    # Two beats run; exactly one holds the lock (RedBeat's), the other waits for it.
    assert len(cluster.lines("beat: Acquired lock")) == 1, cluster.lines("beat:")


def project_counts(listener: Listener, project: str,
                   names: tuple[str, ...] = ("task_event", "task_completed"),
                   ) -> Counter[tuple[str, str, str]]:
    """``(task_id, event name, type)`` -> how often ``listener`` received it."""
    return Counter((r.data["task_id"], r.name, r.data["type"]) for r in listener.events(
        lambda r: r.name in names and isinstance(r.data, dict)
        and r.data.get("project_id") == project))


def difference(got: Counter[Any], expected: Counter[Any]) -> str:
    extra, missing = got - expected, expected - got
    return f"extra {list(extra.items())[:10]}, missing {list(missing.items())[:10]}"


def task_counters(reading: list[tuple[Any, Any]]) -> dict[str, float]:
    """k1_task_events_total by type, in a reading of :func:`readings`."""
    (_, samples), *_ = reading
    return {dict(labels)["type"]: value for name, labels, value in samples
            if name == "k1_task_events_total"}


def readings(cluster: Cluster, token_: str) -> list[tuple[Any, Any]]:
    """Each web process's ``/api/metrics`` (its metrics and DLQ figures) and ``/metrics``
    (every sample)."""
    found = []
    for web in cluster.webs:
        api = API(web, token_)
        body = api.get("/api/metrics").json()
        samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                         for family in text_string_to_metric_families(api.get("/metrics").text)
                         for s in family.samples)
        found.append(((body["metrics"], body["dlq"]), samples))
    return found


def quiet_agreement(cluster: Cluster, token_: str, listener: Listener
                    ) -> tuple[list[tuple[Any, Any]], str]:
    """Both web processes' metrics, read at a moment when no task event was counted: the
    readings before and after a marker are the same. Returns the readings and the marker:
    every event counted before the readings reached ``listener`` before the marker, every
    one counted after reaches it after (counters and events travel in one pipeline)."""
    def attempt() -> tuple[list[tuple[Any, Any]], str] | None:
        before = readings(cluster, token_)
        marker = drain(listener, redis_url=cluster.redis.url)
        after = readings(cluster, token_)
        return (after, marker) if before == after else None

    found = wait_for(attempt, timeout=60, interval=0.5,
                     message="the metrics never stood still for a marker's round trip")
    assert found is not None
    return found


def test_every_event_reaches_a_client_on_each_web_once_and_metrics_agree(
    cluster: Cluster, unique: str,
) -> None:
    project, other = f"scale-{unique}", f"other-{unique}"
    mine, theirs = token(project), token(other)
    apis = (cluster.api(0, mine), cluster.api(1, mine))
    with Listener(cluster.webs[0], mine) as one, Listener(cluster.webs[1], mine) as two, \
            Listener(cluster.webs[1], theirs) as stranger:
        for listener, granted in ((one, project), (two, project), (stranger, other)):
            assert listener.subscribe(granted)["ok"], listener.summary()
        # The counters at rest, with the place in one's stream where the batch begins.
        start, start_marker = quiet_agreement(cluster, mine, one)

        expected: Counter[tuple[str, str, str]] = Counter()
        outcomes: dict[str, list[str]] = {}  # task id -> its attempts' outcomes
        for i in range(TASKS):
            retrying = i % RETRY_EVERY == 0
            answer = apis[i % 2].post("/api/tasks", json={
                "task": FLAKY, "project_id": project,
                "kwargs": {"fail_times": int(retrying), "sleep_ms": HOLD_MS if i < HELD else 0}})
            assert answer.status_code == 202, answer.text
            task_id = answer.json()["task_id"]
            runs = 2 if retrying else 1
            expected.update({(task_id, "task_event", "received"): runs,
                             (task_id, "task_event", "started"): runs,
                             (task_id, "task_event", "succeeded"): 1,
                             (task_id, "task_completed", "succeeded"): 1})
            if retrying:
                expected[(task_id, "task_event", "retried")] = 1
            outcomes[task_id] = ["retried", "succeeded"] if retrying else ["succeeded"]

        for listener in (one, two):
            wait_for(lambda listener=listener: not expected - project_counts(listener, project),
                     timeout=DONE_TIMEOUT, interval=0.5,
                     message=lambda listener=listener: "the batch never completed at "
                     f"{listener.url}: {difference(project_counts(listener, project), expected)}")
        # The marker follows every event of the batch: a duplicate would precede it.
        end, end_marker = quiet_agreement(cluster, mine, one)
        drain(two, stranger, redis_url=cluster.redis.url)
        for listener in (one, two):
            got = project_counts(listener, project)
            assert got == expected, f"{listener.url}: {difference(got, expected)}"
        leaked = stranger.events(lambda r: isinstance(r.data, dict)
                                 and r.data.get("project_id") == project)
        assert not leaked, leaked[:5]
        window = one.events()[marker_index(one, start_marker):marker_index(one, end_marker)]
        broadcasts = {index: [r.data["generated_at"] for r in listener.events(
            lambda r: r.name == "metrics")] for index, listener in enumerate((one, two))}

    # Both web processes read the same figures (quiet_agreement compared them) ...
    (api_1, metrics_1), (api_2, metrics_2) = end
    assert api_1 == api_2 and metrics_1 == metrics_2
    # ... which counted each event of the window once: the batch's, and whatever else one
    # saw (platform tasks of the built-in schedules reach every connection).
    before, after = task_counters(start), task_counters(end)
    seen = Counter(r.data["type"] for r in window if r.name == "task_event")
    counted = {kind: int(after[kind] - before.get(kind, 0)) for kind in after}
    assert {k: v for k, v in counted.items() if v} == dict(seen), (counted, seen)
    assert seen["succeeded"] >= TASKS
    nodes = {r.data["worker"] for r in window
             if r.name == "task_event" and r.data.get("project_id") == project}
    assert nodes == cluster.nodes, f"the batch ran on {nodes}, not on both of {cluster.nodes}"
    # The live ``metrics`` event: one web process sends it per interval (a lease shorter
    # than the interval), whichever it is, and each client gets it once.
    for sent in broadcasts.values():
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(sent)]
        assert all(gap >= MIN_BROADCAST_GAP for gap in gaps), (broadcasts, gaps)
    # Two recorders share the history stream (one consumer group): each attempt is
    # written once, whichever recorder took it.
    recorded: dict[str, list[str]] = {}

    def all_recorded() -> bool:
        for task_id in outcomes.keys() - recorded.keys():
            attempts = apis[1].get(f"/api/tasks/{task_id}").json()["attempts"]
            if attempts and attempts[-1]["outcome"] == "succeeded":
                recorded[task_id] = [attempt["outcome"] for attempt in attempts]
        return recorded.keys() == outcomes.keys()

    wait_for(all_recorded, timeout=DONE_TIMEOUT, interval=1, message=lambda: "the "
             f"recorders never wrote {len(outcomes) - len(recorded)} tasks' history")
    assert recorded == outcomes, {k: v for k, v in recorded.items() if v != outcomes[k]}
    cluster.check_running()


def test_two_beats_fire_each_due_time_once_and_both_nodes_run_the_tasks(
    cluster: Cluster, unique: str,
) -> None:
    project, name = f"beat-{unique}", f"every-second-{unique}"
    mine = token(project)
    with Listener(cluster.webs[0], mine) as one, Listener(cluster.webs[1], mine) as two:
        for listener in (one, two):
            assert listener.subscribe(project)["ok"], listener.summary()
        created = cluster.api(1, mine).post("/api/scheduler/jobs", json={
            "name": name, "task": FLAKY, "every": 1, "project_id": project,
            "kwargs": {"sleep_ms": HOLD_MS}})  # ~3 running at once: both nodes take some
        assert created.status_code == 201, created.text

        def fired(listener: Listener) -> list[dict[str, Any]]:
            return [r.data for r in listener.events(
                lambda r: r.name == "schedule_fired" and r.data.get("schedule") == name)]

        fire_log = FIRE_LOG_KEY.format(schedule_id(project, name))
        try:
            wait_for(lambda: len(fired(one)) >= FIRES, timeout=DONE_TIMEOUT, interval=0.5,
                     message=lambda: f"{len(fired(one))} fires of {FIRES}: {one.summary()}")
            # Beat's own record (the newest 20 fires), read before the delete forgets it.
            log = [json.loads(e) for e in cluster.redis.client().lrange(fire_log, 0, -1)]
        finally:
            deleted = cluster.api(0, mine).delete(f"/api/scheduler/jobs/{name}",
                                                  params={"project_id": project})
        assert deleted.status_code == 204, deleted.text
        fires = fired(one)
        task_ids = [f["task_id"] for f in fires]

        def all_succeeded(listener: Listener) -> bool:
            done = {r.data["task_id"] for r in listener.events(
                lambda r: r.name == "task_event" and r.data.get("type") == "succeeded")}
            return set(task_ids) <= done

        for listener in (one, two):
            wait_for(lambda listener=listener: all_succeeded(listener), timeout=DONE_TIMEOUT,
                     interval=0.5, message=lambda: f"not every fired task succeeded: "
                     f"{one.summary()}")
        drain(one, two, redis_url=cluster.redis.url)
        fires = fired(one)  # with any that came between the wait and the delete
        assert fired(two) == fires, "the web processes relayed different fires"

    due_times = Counter(round(f["due_at"], 3) for f in fires)
    doubled = {due: n for due, n in due_times.items() if n > 1}
    assert not doubled, f"due times fired more than once: {doubled}"
    assert Counter(round(f["due_at"], 3) for f in log) <= due_times, (log, fires)
    # Between two fires, the later serves every due time in between (due_count): a due
    # time it does not cover is a lost fire (the fault suite's measure).
    ordered = sorted(fires, key=lambda f: f["due_at"])
    lost = sum(max(0, round(cur["due_at"] - prev["due_at"]) - (cur["missed"] + 1))
               for prev, cur in itertools.pairwise(ordered))
    assert lost == 0, [(f["due_at"], f["missed"]) for f in ordered]
    assert len({f["task_id"] for f in fires}) == len(fires)
    ran_on = {r.data["worker"] for r in one.events(
        lambda r: r.name == "task_event" and r.data.get("task_id") in task_ids)}
    assert ran_on == cluster.nodes, f"the fires ran on {ran_on}, not on both {cluster.nodes}"
    assert len(cluster.lines("beat: Acquired lock")) == 1, cluster.lines("beat:")
    cluster.check_running()


def test_workflows_started_on_either_web_complete_through_two_conductor_workers(
    cluster: Cluster, unique: str,
) -> None:
    project = f"flow-{unique}"
    mine = token(project)
    with Listener(cluster.webs[0], mine) as one, Listener(cluster.webs[1], mine) as two:
        for listener in (one, two):
            assert listener.subscribe(project)["ok"], listener.summary()
        workflow_ids = []
        for web in (1, 0):  # web 2 first
            started = cluster.api(web, mine).post("/api/workflows/profile_workflow/start",
                                                  timeout=30, json={
                "project_id": project, "input": {"data_path": f"s3://k1/{unique}-{web}.csv"}})
            assert started.status_code == 201, started.text
            workflow_ids.append(started.json()["workflow_id"])

        def finished(listener: Listener) -> set[str]:
            return {r.data["workflow_id"] for r in listener.events(
                lambda r: r.name == "workflow_event" and r.data.get("type") == "completed")}

        for listener in (one, two):
            wait_for(lambda listener=listener: finished(listener) >= set(workflow_ids),
                     timeout=DONE_TIMEOUT, interval=0.5,
                     message=lambda listener=listener: f"workflows never completed at "
                     f"{listener.url}: {listener.summary()}")
        drain(one, two, redis_url=cluster.redis.url)

        def workflow_events(listener: Listener) -> Counter[tuple[str, str, str | None]]:
            return Counter((r.data["workflow_id"], r.data["type"],
                            r.data.get("conductor_task_id")) for r in listener.events(
                lambda r: r.name == "workflow_event" and r.data.get("project_id") == project))

        events = workflow_events(one)
        assert workflow_events(two) == events, "the web processes relayed different events"

    handed_over = Counter(conductor_id for (_, kind, conductor_id) in events
                          if kind == "task_started")
    # Two tasks per workflow (analyze, render), each handed to Celery once.
    assert len(handed_over) == 2 * len(workflow_ids), events
    assert set(handed_over.values()) == {1}, handed_over
    for workflow_id in workflow_ids:
        assert events[(workflow_id, "started", None)] == 1, events
        assert events[(workflow_id, "completed", None)] == 1, events
    # The Conductor workers' own account agrees: one hand-over line per task, whichever
    # of the two took it.
    by_task: Counter[str] = Counter()
    takers = set()
    for process, text in cluster.lines("handed to Celery as"):
        conductor_id = text.split("conductor task ", 1)[1].split()[0]
        if conductor_id in handed_over:
            by_task[conductor_id] += 1
            takers.add(process)
    assert by_task == handed_over, (by_task, handed_over)
    print(f"\nConductor tasks handed over by {sorted(takers)}")
    cluster.check_running()


def test_no_sticky_sessions_a_session_from_one_web_works_on_the_other(
    cluster: Cluster, unique: str,
) -> None:
    project = f"sticky-{unique}"
    signin = create_signin_token(USER, secret=SECRET)
    exchanged = requests.post(f"{cluster.webs[0]}/api/auth/exchange", timeout=10,
                              headers={"Authorization": f"Bearer {signin}"})
    assert exchanged.status_code == 200, exchanged.text
    again = requests.post(f"{cluster.webs[1]}/api/auth/exchange", timeout=10,
                          headers={"Authorization": f"Bearer {signin}"})
    assert again.status_code == 401, again.text  # single use across web processes
    session = exchanged.json()["token"]
    with Listener(cluster.webs[1], session) as client:  # WebSocket, on the other process
        assert client.subscribe(project)["ok"], client.summary()
        answer = cluster.api(0, session).post("/api/tasks", json={
            "task": FLAKY, "project_id": project, "kwargs": {}})
        assert answer.status_code == 202, answer.text
        task_id = answer.json()["task_id"]
        client.wait_for(lambda r: r.name == "task_completed"
                        and r.data.get("task_id") == task_id, timeout=DONE_TIMEOUT,
                        what=f"the completion of {task_id}, requested on web 1")
    # The dashboard itself is served by both.
    for web in cluster.webs:
        assert requests.get(f"{web}/", timeout=10).status_code == 200

    # Long polling: an Engine.IO session lives in the process that opened it; another
    # process does not know it (why polling needs session affinity at the balancer).
    opened = requests.get(f"{cluster.webs[0]}/socket.io/",
                          params={"EIO": "4", "transport": "polling"}, timeout=10)
    assert opened.status_code == 200, opened.text
    sid = json.loads(opened.text[1:])["sid"]  # "0{...}": an Engine.IO open packet
    elsewhere = requests.get(f"{cluster.webs[1]}/socket.io/", timeout=10,
                             params={"EIO": "4", "transport": "polling", "sid": sid})
    assert elsewhere.status_code == 400, elsewhere.text
    same = requests.post(f"{cluster.webs[0]}/socket.io/", data="1", timeout=10,
                         params={"EIO": "4", "transport": "polling", "sid": sid})
    assert same.status_code == 200, same.text  # "1": close, on the process that knows it
    cluster.check_running()
