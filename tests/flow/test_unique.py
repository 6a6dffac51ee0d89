"""Unique tasks (k1.flow.unique) on two real worker nodes, through a real web process."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from k1.celery import app
from k1.flow import InvalidUnique, Unique
from k1.flow.unique import key_of
from k1.tasks.base import K1Task
from tests.conftest import API, celery_worker, k1_process
from tests.events.sockets import Listener
from tests.flow.conftest import TASKS, runs, wait_runs
from tests.flow.tasks import STARTED, TEST_LEASE
from tests.support import free_port, wait_for

SUBMITTERS = 50  # concurrent submissions of one call


@pytest.fixture(scope="module")
def unique_web(services: dict[str, object]) -> Iterator[str]:
    """A web process that registers the flow tests' tasks too (the session's does not):
    eventlet patched first, as ``python -m k1.web`` does, then the tasks, then the app."""
    port = free_port()
    boot = ("import eventlet; eventlet.monkey_patch(); import runpy, tests.flow.tasks; "
            "runpy.run_module('k1.web', run_name='__main__', alter_sys=True)")
    process = k1_process("web-unique", sys.executable, "-c", boot, env={
        "PORT": str(port), "K1_API_WRITE_LIMIT": "1000/second"}).start()  # 50 at once
    url = f"http://127.0.0.1:{port}"
    process.wait_until(lambda: requests.get(f"{url}/api/health", timeout=2).ok, 60,
                       "health never answered 200")
    yield url
    process.stop()


@pytest.fixture
def client(unique_web: str, make_token) -> API:
    return API(unique_web, make_token("ada", "acme"))


def _state(client: API, task_id: str) -> str:
    return client.get(f"/api/tasks/{task_id}").json().get("state", "")


def test_fifty_concurrent_submissions_start_one_run_and_then_another(flow_workers, client):
    tag = uuid.uuid4().hex
    body = {"task": "tests.flow.single", "project_id": "acme",
            "kwargs": {"tag": tag, "ms": 3000}}
    gate = threading.Barrier(SUBMITTERS)

    def post(_: int) -> requests.Response:
        gate.wait(timeout=60)
        return client.post("/api/tasks", json=body, timeout=60)

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        answers = list(pool.map(post, range(SUBMITTERS)))
    assert Counter(a.status_code for a in answers) == {202: 1, 200: SUBMITTERS - 1}, [
        (a.status_code, a.text) for a in answers if a.status_code not in (200, 202)]
    (first,) = {a.json()["task_id"] for a in answers}
    duplicates = [a.json() for a in answers if a.status_code == 200]
    assert {d["duplicate_of"] for d in duplicates} == {first}
    shown = max(duplicates, key=lambda d: d["unique"].get("duplicates") or 0)["unique"]
    assert (shown["held"], shown["holder"], shown["per"]) == (True, first, "arguments")
    assert tag in shown["key"] and shown["duplicates"] == SUBMITTERS - 1, shown
    seen = client.get(f"/api/tasks/{first}").json()
    assert seen["unique"]["holder"] == first or seen["state"] == "SUCCESS", seen

    wait_for(lambda: _state(client, first) == "SUCCESS", timeout=120,
             message=lambda: f"{first} is {_state(client, first)}")
    assert client.get(f"/api/tasks/{first}").json()["unique"] == {"held": False}
    again = client.post("/api/tasks", json=body)
    assert again.status_code == 202, again.text
    second = again.json()["task_id"]
    assert second != first
    # The second run is the marker: the duplicates, had they been sent, ran before it.
    rows = wait_runs(tag, 2, timeout=120)
    assert [task_id for *_, task_id in rows] == [first, second]


def test_a_retrying_task_keeps_its_claim(flow_workers, client):
    tag = uuid.uuid4().hex
    body = {"task": "tests.flow.single", "project_id": "acme",
            "kwargs": {"tag": tag, "fail_times": 2}}
    sent = client.post("/api/tasks", json=body)
    assert sent.status_code == 202, sent.text
    first = sent.json()["task_id"]
    for attempt in (1, 2):  # after each failed attempt, while its retry waits or runs
        wait_runs(tag, attempt, timeout=120)
        answer = client.post("/api/tasks", json=body)
        assert (answer.status_code, answer.json().get("duplicate_of")) == (200, first), (
            attempt, answer.text)
    wait_for(lambda: _state(client, first) == "SUCCESS", timeout=120,
             message=lambda: f"{first} is {_state(client, first)}")
    assert [(attempt, task_id) for *_, attempt, task_id in runs(tag)] == [
        (1, first), (2, first), (3, first)]
    assert client.post("/api/tasks", json=body).status_code == 202


def test_a_sigkilled_workers_claim_expires_with_its_ttl(flow_workers, redis_client):
    from k1.tasks.submissions import lookup, start

    tag, project = uuid.uuid4().hex, f"pu-{uuid.uuid4().hex[:6]}"
    victim = celery_worker("unique-victim", concurrency=1, queues="unique-victim",
                           include=TASKS)
    try:
        first = start("tests.flow.single_short", kwargs={"tag": tag, "ms": 120_000},
                      project_id=project, queue="unique-victim").task_id
        wait_for(lambda: redis_client.llen(STARTED.format(tag)) == 1, timeout=60,
                 message="the victim never started the long task")
        # Renewed while it runs: each renewal moves the claim's expiry on. Awaited until it
        # lies two ttls past the first one seen, the claim has outlived that by a ttl.
        claim_key = lookup(first).unique_key

        def expires_at() -> float | None:
            left_ms = redis_client.pttl(claim_key)
            return time.time() + left_ms / 1000 if left_ms > 0 else None

        first_expiry = expires_at()
        assert first_expiry is not None, "the running task holds no claim"
        wait_for(lambda: (expiry := expires_at()) is not None
                 and expiry >= first_expiry + 2 * TEST_LEASE, timeout=TEST_LEASE * 2 + 30,
                 message=lambda: f"not renewed: expires at {expires_at()}, first "
                                 f"{first_expiry} (None: it lapsed)")
        assert start("tests.flow.single_short", kwargs={"tag": "other"},
                     project_id=project).duplicate_of == first  # unique per project
        victim.kill()
        killed_at = time.monotonic()
        second = wait_for(lambda: _sent_anew(start, project, tag), timeout=TEST_LEASE + 30,
                          interval=0.2, message="the key stayed claimed after the kill")
        freed_after = time.monotonic() - killed_at
    finally:
        victim.kill()
        redis_client.delete("unique-victim")
    # Renewed every third of its ttl: it lapses between 2/3 and 1 ttl after the kill.
    assert TEST_LEASE / 2 <= freed_after <= TEST_LEASE + 5, f"freed after {freed_after:.1f}s"
    (row,) = wait_runs(tag, 1, timeout=60)
    assert row[-1] == second


def _sent_anew(start: Any, project: str, tag: str) -> str | None:
    sent = start("tests.flow.single_short", kwargs={"tag": tag}, project_id=project)
    return None if sent.duplicate_of else sent.task_id


def test_the_description_documents_the_duplicate_answer(web):
    spec = requests.get(f"{web}/api/openapi.json", timeout=10).json()
    answers = spec["paths"]["/api/tasks"]["post"]["responses"]
    assert {"200", "202"} <= set(answers)
    reference = answers["200"]["content"]["application/json"]["schema"]["$ref"]
    duplicate = spec["components"]["schemas"][reference.rsplit("/", 1)[-1]]
    assert {"task_id", "duplicate_of", "unique"} <= set(duplicate["required"])


def _define(unique: object, name: str = "") -> Any:
    def account_sync(self: K1Task, project_id: str, account: str, full: bool = False) -> None:
        """A task with a unique declaration under test."""

    return app.task(base=K1Task, bind=True, lazy=False, unique=unique,
                    name=name or f"tests.unique.{uuid.uuid4().hex[:8]}")(account_sync)


@pytest.mark.parametrize(("unique", "message"), [
    ("yes", r"unique must be True or k1\.flow\.Unique\(\.\.\.\), not 'yes'"),
    (Unique(per="acount"),
     r"unique per 'acount', which is not one of its arguments \(project_id, account, full\)"),
])
def test_a_bad_unique_declaration_fails_when_the_task_is_defined(unique, message):
    with pytest.raises(TypeError, match=message):
        _define(unique)


@pytest.mark.parametrize(("options", "field"), [
    ({"per": "9x"}, "per"), ({"per": []}, "per"), ({"per": ["a", "a"]}, "per"),
    ({"per": 3}, "per"), ({"ttl": 1}, "ttl"), ({"ttl": True}, "ttl"),
    ({"ttl": 30 * 24 * 3600}, "ttl"),
])
def test_a_bad_unique_option_names_its_field(options, field):
    with pytest.raises(InvalidUnique) as caught:
        Unique(**options)
    assert caught.value.field == field and str(caught.value).startswith(f"{field}:")


def test_keys_canonicalise_the_call_and_keep_projects_apart():
    whole = _define(True)
    assert key_of(whole, ("acme", "b7"), {}, "acme") == key_of(
        whole, (), {"project_id": "acme", "account": "b7", "full": False}, "acme")
    assert key_of(whole, ("acme", "b7"), {}, "acme") != key_of(whole, ("acme", "b8"), {}, "acme")
    assert key_of(whole, ("x", "b7"), {}, "acme") != key_of(whole, ("x", "b7"), {}, "beta")
    per_account = _define(Unique(per="account"))
    assert key_of(per_account, ("acme", "b7", True), {}, "acme") == key_of(
        per_account, ("acme", "b7"), {}, "acme")
    per_project = _define(Unique(per="project"))
    assert key_of(per_project, ("acme", "b7"), {}, "acme") == key_of(
        per_project, ("acme", "c9"), {}, "acme")


def test_a_revoked_task_frees_its_key(flow_workers, client):
    tag = uuid.uuid4().hex
    body = {"task": "tests.flow.single", "project_id": "acme",
            "kwargs": {"tag": tag, "ms": 120_000}}
    first = client.post("/api/tasks", json=body).json()["task_id"]
    wait_for(lambda: _state(client, first) == "STARTED", timeout=60,
             message=lambda: f"{first} is {_state(client, first)}")
    assert client.post("/api/tasks", json=body).status_code == 200
    app.control.revoke(first, terminate=True, signal="SIGKILL")
    # Freed when the worker reports the revocation, not when the claim's hour runs out.
    again = wait_for(lambda: _accepted(client, body), timeout=60, interval=0.2,
                     message="the revoked task's key stayed claimed")
    assert again != first
    app.control.revoke(again, terminate=True, signal="SIGKILL")


def _accepted(client: API, body: dict[str, Any]) -> str | None:
    answer = client.post("/api/tasks", json=body)
    return answer.json()["task_id"] if answer.status_code == 202 else None


def test_a_dead_task_frees_its_key_and_its_replay_joins_a_running_equal(flow_workers, client):
    from k1.recovery.dlq.replay import replay
    from tests.recovery.conftest import wait_letter

    tag = uuid.uuid4().hex
    body = {"task": "tests.flow.single", "project_id": "acme",
            "kwargs": {"tag": tag, "fail_times": 3}}  # every attempt fails: it dies
    first = client.post("/api/tasks", json=body).json()["task_id"]
    letter = wait_letter(first, timeout=120)
    again = client.post("/api/tasks", json=body)  # the dead task released its key
    assert again.status_code == 202, again.text
    second = again.json()["task_id"]
    # Replayed while an equal task holds the key, the letter joins it: one run at a time.
    assert replay(letter.id).replay_task_id == second
    wait_letter(second, timeout=120)
    third = replay(letter.id, force=True).replay_task_id  # the key is free: sent anew
    assert third not in (first, second)
    wait_letter(third, timeout=120)
    assert Counter(task_id for *_, task_id in runs(tag)) == {first: 3, second: 3, third: 3}


def test_a_run_whose_key_was_taken_while_it_waited_does_not_run(
        flow_workers, unique_web, make_token, redis_client):
    from k1.tasks.submissions import start

    ops = API(unique_web, make_token("ops", "*"))
    tag, project = uuid.uuid4().hex, f"pq-{uuid.uuid4().hex[:6]}"
    stale = start("tests.flow.single_short", kwargs={"tag": tag}, project_id=project,
                  queue="unique-later")  # nobody consumes it yet
    assert stale.claim is not None
    wait_for(lambda: not redis_client.exists(stale.claim.redis_key), timeout=30,
             message="the unrun task's claim never expired")
    holder = start("tests.flow.single_short", kwargs={"tag": tag, "ms": 60_000},
                   project_id=project).task_id
    late = None
    try:
        wait_for(lambda: redis_client.lrange(STARTED.format(tag), 0, -1) == [holder],
                 timeout=60, message="the new holder never started")
        with Listener(unique_web, make_token("ada", project)) as listener:
            listener.subscribe(project)
            late = celery_worker("unique-later", concurrency=1, queues="unique-later",
                                 include=TASKS)
            wait_for(lambda: _state(ops, stale.task_id) == "REVOKED", timeout=60,
                     message=lambda: f"{stale.task_id} is {_state(ops, stale.task_id)}")
            said = listener.wait_for(lambda r: r.name == "task_event"
                                     and r.data.get("task_id") == stale.task_id
                                     and r.data.get("state") == "REVOKED", timeout=30)
        assert said.data["exception"] == "Superseded", said.data
    finally:
        if late is not None:
            late.stop()
        app.control.revoke(holder, terminate=True, signal="SIGKILL")
    seen = ops.get(f"/api/tasks/{stale.task_id}").json()
    assert seen["error"]["message"] == f"duplicate of task {holder}, which holds its unique key"
    assert redis_client.lrange(STARTED.format(tag), 0, -1) == [holder]  # it never started
