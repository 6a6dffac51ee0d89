"""Limits and queues at run time: the API, the CLI, and their effect on real workers."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.conftest import API, celery_worker
from tests.events.sockets import Listener
from tests.flow.conftest import TASKS, max_overlap, runs, send, wait_runs
from tests.flow.tasks import STARTED
from tests.support import wait_for


@pytest.fixture
def operator(web, make_token) -> API:
    return API(web, make_token("ops", "*"))


@pytest.mark.parametrize(("body", "field"), [
    ({"tasks": ["tests.flow.paced"], "concurrency": 0}, "concurrency"),
    ({"tasks": ["tests.flow.paced"], "concurrency": "2"}, "concurrency"),
    ({"tasks": ["tests.flow.paced"], "rate": "10/d"}, "rate"),
    ({"tasks": ["tests.flow.paced"], "concurrency": 1, "per": "9x"}, "per"),
    ({"tasks": ["no.such.task"], "concurrency": 1}, "tasks"),
    ({"tasks": "tests.flow.paced", "concurrency": 1}, "tasks"),
    ({"tasks": ["tests.flow.paced"]}, "concurrency"),
    ({"tasks": ["tests.flow.paced"], "concurrency": 1, "burst": 3}, "burst"),
])
def test_a_bad_limit_is_a_400_naming_the_field(operator, body, field):
    answer = operator.put("/api/limits/test-bad", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith(f"{field}:"), answer.json()
    assert operator.get("/api/limits").json()["limits"] is not None
    assert "test-bad" not in {x["name"] for x in operator.get("/api/limits").json()["limits"]}


def test_changing_limits_needs_an_operator(api):
    body = {"tasks": ["tests.flow.paced"], "concurrency": 1}
    assert api.put("/api/limits/test-x", json=body).status_code == 403
    assert api.delete("/api/limits/test-x").status_code == 403
    assert api.post("/api/queues/celery/pause").status_code == 403
    assert api.get("/api/limits").status_code == 200


def test_a_runtime_limit_takes_effect_on_every_worker_and_reports_its_use(
        flow_workers, operator, web, make_token):
    name, tag = f"test-rt-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    body = {"tasks": ["tests.flow.paced"], "per": "tag", "concurrency": 1}
    answer = operator.put(f"/api/limits/{name}", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["source"] == "runtime"
    try:
        with Listener(web, make_token("ops", "*")) as ops:
            # Sent at once: the workers must see the limit within their refresh (< 2 s);
            # the tasks each last long enough that the first ones are still running then.
            send("tests.flow.paced", 6, project_id="acme", tag=tag, ms=2500)
            wait_for(lambda: _usage(operator, name, tag).get("running") == 1, timeout=30,
                     message=lambda: f"no slot in use: {_usage(operator, name, tag)}")
            ops.wait_for(lambda r: r.name == "limit_state" and r.data.get("name") == name
                         and r.data["type"] == "saturated", timeout=30)
            rows = wait_runs(tag, 6, timeout=120)
            ops.wait_for(lambda r: r.name == "limit_state" and r.data.get("name") == name
                         and r.data["type"] == "cleared", timeout=30)
        later = [row for row in rows if row[0] > rows[0][0] + 2.0]
        assert max_overlap(later) == 1, f"{max_overlap(later)} ran at once under the limit"
    finally:
        assert operator.delete(f"/api/limits/{name}").status_code == 200
    assert operator.delete(f"/api/limits/{name}").status_code == 404
    assert name not in {x["name"] for x in operator.get("/api/limits").json()["limits"]}


def _usage(operator: API, name: str, key: str) -> dict:
    for limit in operator.get("/api/limits").json()["limits"]:
        if limit["name"] == name:
            return next((u for u in limit["usage"] if u["key"] == key), {})
    return {}


def test_a_code_limit_is_listed_and_can_be_replaced_at_run_time(flow_workers, operator):
    listed = {x["name"]: x for x in operator.get("/api/limits").json()["limits"]}
    assert listed["test-pair"]["source"] == "code"
    assert listed["test-pair"]["tasks"] == ["tests.flow.limited"]
    body = {"tasks": ["tests.flow.limited"], "per": "project", "concurrency": 3, "lease": 3}
    assert operator.put("/api/limits/test-pair", json=body).status_code == 200
    try:
        listed = {x["name"]: x for x in operator.get("/api/limits").json()["limits"]}
        assert (listed["test-pair"]["source"], listed["test-pair"]["concurrency"]) == (
            "runtime", 3)
    finally:
        deleted = operator.delete("/api/limits/test-pair").json()
    assert deleted["now"]["source"] == "code" and deleted["now"]["concurrency"] == 2


def test_pause_holds_the_queue_and_resume_releases_it_in_order_without_loss(
        flow_workers, operator, redis_client):
    tag, marker = uuid.uuid4().hex, uuid.uuid4().hex
    late = None
    paused = operator.post("/api/queues/celery/pause")
    assert paused.status_code == 200, paused.text
    try:
        assert {"flow-a@k1test", "flow-b@k1test"} <= set(paused.json()["workers"])
        ids = send("tests.flow.hold", 12, project_id="acme", tag=tag, ms=50)
        # A worker started during the pause must not take them either.
        late = celery_worker("flow-late", concurrency=2, queues="celery,flow-late",
                             include=TASKS)
        # Markers, sent after them on queues that are not paused: once they have run,
        # the workers are fetching, and the paused tasks would have started by then.
        send("tests.flow.hold", 1, queue="flow-late", project_id="acme", tag=marker)
        send("tests.flow.hold", 4, queue="k1.platform", project_id="acme", tag=marker)
        wait_runs(marker, 5, timeout=60)
        assert runs(tag) == [] and redis_client.llen(STARTED.format(tag)) == 0
        # Still queued, in the order they were sent (LPUSH: the oldest is at the right end).
        queued = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("celery", 0, -1)]
        assert [task_id for task_id in reversed(queued) if task_id in ids] == ids, queued
    finally:
        resumed = operator.post("/api/queues/celery/resume")
    assert resumed.status_code == 200, resumed.text
    assert "flow-late@k1test" in resumed.json()["workers"]
    try:
        rows = wait_runs(tag, 12, timeout=120)
    finally:
        if late is not None:
            late.stop()
    assert sorted(task_id for *_, task_id in rows) == sorted(ids)  # each once, none lost
    # Which one starts first after the resume is the workers' race (one may resume and
    # fetch before the others): the order the pause kept is the queue's, checked above.


def test_a_worker_that_missed_the_pause_stops_consuming_instead_of_handing_back_in_a_loop(
        operator, redis_client, services):
    from k1.celery import app
    from k1.flow.queues import PAUSED_KEY, _consumers_of

    queue, tag = f"missed-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    worker = celery_worker(f"flow-missed-{tag[:6]}", concurrency=1, queues=queue,
                           include=TASKS)
    try:
        # Paused behind the worker's back: as if it had missed the broadcast.
        redis_client.sadd(PAUSED_KEY, queue)
        [task_id] = send("tests.flow.hold", 1, queue=queue, project_id="acme", tag=tag)
        # It hands the task back once, and stops fetching from the queue (it would
        # otherwise take it again at once, a hundred times a second).
        wait_for(lambda: not _consumers_of(app, queue), timeout=30, interval=0.5,
                 message=lambda: f"{queue} still consumed: {_consumers_of(app, queue)}")
        assert redis_client.llen(queue) == 1 and runs(tag) == []
        resumed = operator.post(f"/api/queues/{queue}/resume")
        assert resumed.status_code == 200, resumed.text
        assert any(w.startswith("flow-missed-") for w in resumed.json()["workers"])
        assert [row[-1] for row in wait_runs(tag, 1, timeout=60)] == [task_id]
    finally:
        redis_client.srem(PAUSED_KEY, queue)
        worker.stop()


def test_a_bad_queue_name_is_a_400(operator):
    answer = operator.post("/api/queues/bad%20name/pause")
    assert answer.status_code == 400 and answer.json()["error"].startswith("queue:")


def test_the_cli_sets_lists_and_deletes_limits_and_pauses_queues(flow_workers):
    from tests.test_cli import run_k1

    name, queue = f"test-cli-{uuid.uuid4().hex[:6]}", f"q-{uuid.uuid4().hex[:6]}"
    done = run_k1("limits", "set", name, "--task", "tests.flow.paced", "--rate", "10/d")
    assert done.returncode == 2 and "rate:" in done.stderr, done.stderr
    done = run_k1("limits", "set", name, "--task", "tests.flow.paced", "--per", "project",
                  "--concurrency", "3")
    assert done.returncode == 0, done.stderr
    listed = run_k1("limits", "list")
    assert f"{name} (runtime): 3 at once per project; tasks: tests.flow.paced" in listed.stdout
    assert run_k1("limits", "delete", name).returncode == 0
    assert run_k1("limits", "delete", name).returncode == 2
    assert run_k1("queues", "pause", queue).returncode == 0
    assert queue in run_k1("queues", "list").stdout.split()
    assert run_k1("queues", "resume", queue).returncode == 0
    assert queue not in run_k1("queues", "list").stdout.split()


def test_limit_keys_reach_only_whoever_may_see_their_project(web, worker, operator, make_token):
    """A limit's key is a tenant's data: a per-project key is shown (API, events) to that
    project and to operators, a per-argument key (any project's value) to operators only."""
    from k1.flow.gate import give_back, take_slot
    from k1.flow.limits import Limit

    u = uuid.uuid4().hex[:8]
    mine, theirs, value = f"p1-{u}", f"p2-{u}", f"secret-{u}"
    by_project = Limit(f"test-keys-p-{u}", per="project", concurrency=1)
    by_tag = Limit(f"test-keys-t-{u}", per="tag", concurrency=1)
    for limit in (by_project, by_tag):
        body = {"tasks": ["tests.flow.paced"], "per": limit.per, "concurrency": 1}
        assert operator.put(f"/api/limits/{limit.name}", json=body).status_code == 200
    slots = []
    try:
        with Listener(web, make_token(f"u-{u}", mine)) as user, \
                Listener(web, make_token(f"ops-{u}", "*")) as ops:
            assert user.subscribe(mine)["ok"]
            # Each key saturates (its second slot refused); the user's own key last.
            for limit, key in ((by_tag, value), (by_project, theirs), (by_project, mine)):
                slot, _ = take_slot(limit, key)
                slots.append(slot)
                assert take_slot(limit, key)[0] is None
            user.wait_for(lambda r: r.name == "limit_state" and r.data.get("key") == mine,
                          timeout=30)  # the marker: what came before it has arrived too
            for key in (theirs, value):
                ops.wait_for(lambda r, key=key: r.name == "limit_state"
                             and r.data.get("key") == key, timeout=30)
            assert {r.data.get("key") for r in user.events(lambda r: r.name == "limit_state")
                    } == {mine}
        seen = {x["name"]: [use["key"] for use in x["usage"]] for x in
                API(web, make_token(f"u-{u}", mine)).get("/api/limits").json()["limits"]}
        assert (seen[by_project.name], seen[by_tag.name]) == ([mine], [])
        everything = {x["name"]: {use["key"] for use in x["usage"]}
                      for x in operator.get("/api/limits").json()["limits"]}
        assert everything[by_project.name] == {mine, theirs}
        assert everything[by_tag.name] == {value}
    finally:
        for slot in slots:
            if slot is not None:
                give_back(slot)
        for limit in (by_project, by_tag):
            operator.delete(f"/api/limits/{limit.name}")
