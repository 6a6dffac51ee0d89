"""One way to send a task (k1.tasks.submissions): send, submit, and their checks."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from k1.celery import app
from k1.tasks.base import K1Task
from k1.tasks.submissions import (
    NotAllowed,
    SubmissionError,
    check_arguments,
    lookup,
    send,
    submit,
    validate_project_id,
)
from tests.recovery.conftest import wait_letter
from tests.support import RedisServer, wait_for


@app.task(base=K1Task, name="tests.platform_wide", operator_only=True)
def platform_wide(project_id: str) -> None:
    """Stands for a task that acts on every project."""


@app.task(base=K1Task, name="tests.internal")
def internal(project_id: str) -> None:
    """Stands for a task no client may start (public is opt-in)."""


@pytest.mark.parametrize("value", ["", None, True, [], "a" * 256, "a\x00b", "\ud800", " acme",
                                   "acme\n", "tab\there"])
def test_a_bad_project_id_is_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(SubmissionError, match=r"^where: "):
        validate_project_id(value, field="where")


@pytest.mark.parametrize(("value", "expected"), [("acme", "acme"), (42, "42"),
                                                 ("a" * 255, "a" * 255), ("é-ü p.1", "é-ü p.1")])
def test_a_good_project_id_is_kept(value: Any, expected: str) -> None:
    assert validate_project_id(value) == expected


def test_arguments_must_fit_the_signature_and_the_task_limits() -> None:
    check_arguments("k1.tasks.demo.flaky", (), {"project_id": "a", "sleep_ms": 10_000})
    with pytest.raises(SubmissionError, match=r"arguments do not match k1.tasks.demo.flaky\("):
        check_arguments("k1.tasks.demo.flaky", (), {"project_id": "a", "bogus": 1})
    for bad in (10_001, -1, True, "5", 1.5):
        with pytest.raises(SubmissionError, match=r"^sleep_ms: must be an integer from 0 to"):
            check_arguments("k1.tasks.demo.flaky", (), {"project_id": "a", "sleep_ms": bad})
    with pytest.raises(SubmissionError, match="unknown task 'nope'"):
        check_arguments("nope")


def queued_message(queue: str, redis_server: RedisServer) -> dict[str, Any]:
    """The one message waiting in ``queue`` (nobody consumes it), removed from Redis."""
    client = redis_server.client()
    raw = wait_for(lambda: client.lrange(queue, 0, -1), timeout=10,
                   message=f"nothing in queue {queue}")
    client.delete(queue)
    assert len(raw) == 1
    return json.loads(raw[0])


def test_send_stamps_project_and_user_and_records_the_submission(
        services: object, redis_server: RedisServer) -> None:
    queue = f"q-send-{uuid.uuid4().hex[:8]}"
    task_id = send("k1.tasks.demo.flaky", kwargs={"project_id": "acme"}, project_id="acme",
                   user_id="ada", headers={"k1_schedule": "nightly"}, queue=queue)
    message = queued_message(queue, redis_server)
    assert message["headers"]["id"] == task_id
    assert {k: message["headers"].get(k) for k in ("k1_project_id", "k1_user_id",
                                                    "k1_schedule")} == {
        "k1_project_id": "acme", "k1_user_id": "ada", "k1_schedule": "nightly"}
    submission = lookup(task_id)
    assert submission is not None
    assert (submission.task, submission.project_id, submission.user_id) == (
        "k1.tasks.demo.flaky", "acme", "ada")


def test_send_records_on_the_callers_pipeline_and_not_without_a_project(
        services: object, redis_server: RedisServer) -> None:
    from k1.connections import get_redis

    queue = f"q-send-{uuid.uuid4().hex[:8]}"
    pipe = get_redis().pipeline()
    task_id = send("k1.tasks.demo.flaky", kwargs={"project_id": "acme"}, project_id="acme",
                   pipe=pipe, queue=queue)
    assert lookup(task_id) is None  # not before the caller executes its pipeline
    pipe.execute()
    assert lookup(task_id) is not None
    # A task this process does not know is sent by name; no project, no record.
    other = send("tests.elsewhere", kwargs={"x": 1}, project_id=None, queue=queue)
    assert lookup(other) is None
    ids = [queued["headers"]["id"] for queued in
           (json.loads(m) for m in redis_server.client().lrange(queue, 0, -1))]
    redis_server.client().delete(queue)
    assert sorted(ids) == sorted([task_id, other])


def test_submit_starts_public_tasks_and_operator_only_ones_for_operators(
        services: object, redis_server: RedisServer) -> None:
    queue = f"q-submit-{uuid.uuid4().hex[:8]}"
    with pytest.raises(NotAllowed, match="operators only"):
        submit("tests.platform_wide", project_id="acme", queue=queue)
    with pytest.raises(SubmissionError, match=r"unknown task 'tests\.internal'") as private:
        submit("tests.internal", project_id="acme", operator=True, queue=queue)
    assert not isinstance(private.value, NotAllowed)
    assert "tests.platform_wide" in str(private.value)  # an operator is told of it...
    with pytest.raises(SubmissionError, match="unknown task") as unknown:
        submit("tests.internal", project_id="acme", queue=queue)
    assert "tests.platform_wide" not in str(unknown.value)  # ...a project token is not
    task_id = submit("tests.platform_wide", project_id="acme", operator=True, queue=queue)
    assert queued_message(queue, redis_server)["headers"]["id"] == task_id
    with pytest.raises(SubmissionError, match="differs from project_id"):
        submit("k1.tasks.demo.flaky", kwargs={"project_id": "beta"}, project_id="acme")
    with pytest.raises(SubmissionError, match=r"^project_id: "):
        submit("k1.tasks.demo.flaky", project_id="bad\x00id")


def test_a_message_sent_around_the_checks_dies_on_its_limits(worker: object) -> None:
    task_id = send("k1.tasks.demo.flaky", kwargs={"project_id": "acme", "sleep_ms": 3_600_000},
                   project_id="acme")
    letter = wait_letter(task_id)
    assert letter.exception_type == "ValueError" and letter.attempts == 1
    assert "sleep_ms: must be an integer from 0 to 10000" in letter.exception_message


def test_a_run_past_its_soft_time_limit_dies_once_with_a_letter(worker: object) -> None:
    assert app.conf.task_soft_time_limit and app.conf.task_time_limit > \
        app.conf.task_soft_time_limit
    # The call's own limit wins over the default.
    task_id = send("k1.tasks.demo.flaky", kwargs={"project_id": "acme", "sleep_ms": 5000},
                   project_id="acme", soft_time_limit=1)
    letter = wait_letter(task_id)
    assert letter.exception_type == "SoftTimeLimitExceeded" and letter.attempts == 1



def test_a_hard_time_limit_death_gets_a_letter_of_its_own(services: object) -> None:
    """Past its hard limit the process is killed, and Celery calls ``on_failure`` from the
    worker's main process, outside the task's request (celery.worker.request.on_timeout):
    done here the same way, the letter keeps the task's id as its idempotency key."""
    from celery.exceptions import TimeLimitExceeded

    from k1.tasks.demo import flaky

    task_id = str(uuid.uuid4())
    flaky.on_failure(TimeLimitExceeded(360), task_id, (), {"project_id": "acme"}, None)
    letter = wait_letter(task_id, timeout=10)
    assert (letter.exception_type, letter.project_id) == ("TimeLimitExceeded", "acme")
    assert letter.idempotency_key == task_id  # not "None", shared by every such death


def test_the_tasks_route_answers_403_for_operator_only_work_and_202_for_an_operator(
        services: object, redis_server: RedisServer, make_token) -> None:
    """The real blueprint in-process, where the test's operator-only task is registered."""
    from flask import Flask

    from k1.settings import get_settings
    from k1.web import tasks
    from k1.web.errors import register_error_handlers

    web = Flask(__name__)
    web.config["K1_SETTINGS"] = get_settings()
    web.register_blueprint(tasks.bp)
    register_error_handlers(web)
    client = web.test_client()
    body = {"task": "tests.platform_wide", "project_id": "acme"}

    def post(token: str):
        return client.post("/api/tasks", json=body, headers={"Authorization": f"Bearer {token}"})

    refused = post(make_token("ada", "acme"))
    assert refused.status_code == 403, refused.get_data(as_text=True)
    assert "operators only" in refused.get_json()["error"]
    # An operator may. (The session's worker, should one run, discards the message: this
    # test's task is registered only in this process.)
    started = post(make_token("root", "*"))
    assert started.status_code == 202, started.get_data(as_text=True)
    assert lookup(started.get_json()["task_id"]) is not None
