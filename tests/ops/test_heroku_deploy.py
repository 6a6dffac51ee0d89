"""A Heroku-style deploy, run as a Procfile host would: honcho, configured only by the
environment Heroku sets (postgres:// on a real PostgreSQL, rediss:// on a real TLS Redis
with a self-signed certificate, PORT), the release phase twice at once, then a task, a
schedule and a workflow complete, a Socket.IO client receives their events and the task's
history is recorded."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from k1.auth import create_token
from tests.conductor.conftest import conductor_server  # noqa: F401 - the session's server
from tests.conftest import BASE
from tests.events.sockets import Listener
from tests.ops.conftest import TLSRedis
from tests.ops.support import fresh_database, honcho, procfile_env
from tests.support import ROOT, VENV_BIN, free_port

pytestmark = pytest.mark.slow

SECRET = "heroku-secret-" + uuid.uuid4().hex + uuid.uuid4().hex
FLOWER_AUTH = ("ops", "heroku-flower-password")
PROJECT = "heroku"
PROCESSES = ("web", "worker", "beat", "recorder", "conductor", "flower")
START_TIMEOUT = 120  # s for every process to be up on a loaded 2-core machine
DONE_TIMEOUT = 90  # s for a task, a schedule or a workflow to complete


def heroku_env(tls_redis: TLSRedis, database_url: str, conductor_url: str,
               external_url: str, **extra: str) -> dict[str, str]:
    return procfile_env(
        redis_url=tls_redis.url, database_url=database_url, conductor_url=conductor_url,
        external_url=external_url, secret=SECRET, K1_REDIS_SSL_CERT_REQS="none",
        FLOWER_BASIC_AUTH=":".join(FLOWER_AUTH), FLOWER_PORT=str(free_port()),
        K1_DATA_DIR=str(BASE / "heroku-data"), **extra)


@pytest.fixture(scope="module")
def deploy(tls_redis: TLSRedis, conductor_server, external_service: str,  # noqa: F811
           services: dict[str, object]) -> Iterator[dict[str, Any]]:
    database_url = fresh_database("k1_heroku")
    env = heroku_env(tls_redis, database_url, conductor_server.api_url, external_service)
    # Release phase: two deploys' releases at once, both must succeed.
    releases = [subprocess.Popen([str(VENV_BIN / "k1"), "db", "upgrade"], env=env, cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
    outputs = [release.communicate(timeout=120)[0] for release in releases]
    assert [release.returncode for release in releases] == [0, 0], outputs
    port = free_port()
    app = honcho("heroku", env, port, *PROCESSES).start()
    web = f"http://127.0.0.1:{port}"
    try:
        health = app.wait_until(
            lambda: requests.get(f"{web}/api/health", timeout=3).json()
            if requests.get(f"{web}/api/health", timeout=3).ok else None,
            START_TIMEOUT, "web never reported every dependency up")
        yield {"web": web, "env": env, "app": app, "health": health}
    finally:
        app.stop(timeout=40)


def test_every_process_is_healthy_over_tls(deploy: dict[str, Any]) -> None:
    health, env = deploy["health"], deploy["env"]
    assert {health[name]["status"] for name in ("redis", "database", "conductor")} == {"up"}
    flower = f"http://127.0.0.1:{env['FLOWER_PORT']}"
    workers = deploy["app"].wait_until(
        lambda: requests.get(f"{flower}/api/workers", params={"refresh": "true"},
                             auth=FLOWER_AUTH, timeout=10).json(),
        START_TIMEOUT, "Flower never listed the worker")
    assert any(name.startswith("worker.1@") for name in workers), workers  # honcho's name
    check = subprocess.run([str(VENV_BIN / "k1"), "check"], env=env, cwd=BASE,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_task_a_schedule_and_a_workflow_complete_and_their_events_arrive(
    deploy: dict[str, Any], unique: str,
) -> None:
    web = deploy["web"]
    token = create_token("ops", ["*"], secret=SECRET, ttl=600)
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    with Listener(web, token) as client:
        client.subscribe(PROJECT)
        task = api.post(f"{web}/api/tasks", timeout=10, json={
            "task": "k1.tasks.demo.flaky", "project_id": PROJECT, "kwargs": {"fail_times": 1}})
        assert task.status_code == 202, task.text
        task_id = task.json()["task_id"]
        schedule = api.post(f"{web}/api/scheduler/jobs", timeout=10, json={
            "name": f"heroku-{unique}", "task": "k1.tasks.demo.flaky", "every": 1,
            "project_id": PROJECT})
        assert schedule.status_code == 201, schedule.text
        workflow = api.post(f"{web}/api/workflows/profile_workflow/start", timeout=30, json={
            "project_id": PROJECT, "input": {"data_path": f"s3://k1/{unique}.csv"}})
        assert workflow.status_code == 201, workflow.text
        workflow_id = workflow.json()["workflow_id"]

        def arrived(name: str, match: dict[str, Any]) -> Any:
            return client.wait_for(
                lambda e: e.name == name and all(e.data.get(k) == v for k, v in match.items()),
                timeout=DONE_TIMEOUT)

        arrived("task_event", {"task_id": task_id, "type": "retried"})
        arrived("task_event", {"task_id": task_id, "type": "succeeded"})
        fired = arrived("schedule_fired", {"schedule": f"heroku-{unique}", "type": "fired"})
        arrived("task_event", {"task_id": fired.data["task_id"], "type": "succeeded"})
        arrived("workflow_event", {"workflow_id": workflow_id, "type": "completed"})
    assert api.get(f"{web}/api/tasks/{task_id}", timeout=10).json()["state"] == "SUCCESS"
    api.delete(f"{web}/api/scheduler/jobs/heroku-{unique}", timeout=10)
    # The Procfile's recorder wrote the task's runs (rediss:// stream to postgres://).
    def recorded_runs() -> list[str] | None:
        body = api.get(f"{web}/api/tasks/{task_id}", timeout=10).json()
        outcomes = [attempt["outcome"] for attempt in body["attempts"]]
        return outcomes if outcomes[-1:] == ["succeeded"] else None

    runs = deploy["app"].wait_until(recorded_runs, DONE_TIMEOUT,
                                    "the recorder never wrote the task's history")
    assert runs == ["retried", "succeeded"], runs


def test_without_the_certificate_policy_the_logs_and_health_name_the_fix(
    tls_redis: TLSRedis, services: dict[str, object],
) -> None:
    env = heroku_env(tls_redis, fresh_database("k1_heroku_nocert"), "", "http://127.0.0.1:1")
    del env["K1_REDIS_SSL_CERT_REQS"], env["CONDUCTOR_SERVER_URL"]
    port = free_port()
    app = honcho("heroku-nocert", env, port, "web", "worker").start()
    try:
        app.wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in app.log_tail(400) and
                       "set K1_REDIS_SSL_CERT_REQS=none" in app.log_tail(400),
                       START_TIMEOUT, "the logs never named K1_REDIS_SSL_CERT_REQS=none")

        def health() -> dict[str, Any] | None:
            answer = requests.get(f"http://127.0.0.1:{port}/api/health", timeout=10)
            return answer.json() if answer.status_code == 503 else None

        redis = app.wait_until(lambda: (health() or {}).get("redis"), START_TIMEOUT,
                               "the web process's health never answered 503")
        assert redis["status"] == "down" and "CERTIFICATE_VERIFY_FAILED" in redis["error"]
        assert "K1_REDIS_SSL_CERT_REQS=none" in redis["fix"], redis
    finally:
        app.stop(timeout=40)
