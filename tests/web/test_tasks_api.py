"""POST /api/tasks and GET /api/tasks/<id> against the real web process and worker."""

from __future__ import annotations

import pytest

from tests.conftest import API
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("worker")


def wait_state(api: API, task_id: str, states: set[str], timeout: float = 30) -> dict:
    seen: list[str] = []

    def probe() -> dict | None:
        body = api.get(f"/api/tasks/{task_id}").json()
        if not seen or seen[-1] != body["state"]:
            seen.append(body["state"])
        return body if body["state"] in states else None

    return wait_for(probe, timeout=timeout, interval=0.1,
                    message=lambda: f"task {task_id} never reached {states}; states seen {seen}")


def test_task_posted_runs_on_a_worker_and_its_result_is_readable(api: API) -> None:
    response = api.post("/api/tasks", json={
        "task": "k1.tasks.demo.flaky", "kwargs": {"sleep_ms": 10}, "project_id": "acme"})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    body = wait_state(api, task_id, {"SUCCESS", "FAILURE"})
    assert body["state"] == "SUCCESS"
    assert body["result"] == {"project_id": "acme", "runs": 1, "idempotency_key": task_id}
    assert body["task"] == "k1.tasks.demo.flaky" and body["user_id"] == "ada"


def test_flaky_shows_failures_then_success(api: API, unique: str) -> None:
    response = api.post("/api/tasks", json={
        "task": "k1.tasks.demo.flaky", "kwargs": {"fail_times": 2, "key": unique},
        "project_id": "acme"})
    task_id = response.json()["task_id"]
    retry = wait_state(api, task_id, {"RETRY"})
    assert retry["error"]["type"] == "TransientError"
    assert "failure 1 of 2" in retry["error"]["message"]
    done = wait_state(api, task_id, {"SUCCESS", "FAILURE"})
    assert done["state"] == "SUCCESS" and done["result"]["runs"] == 3


def test_analyze_profile_calls_the_external_service(api: API, external_service: str) -> None:
    task_id = api.post("/api/tasks", json={
        "task": "k1.tasks.analyze_profile", "kwargs": {"data_path": "s3://bucket/p.csv"},
        "project_id": "acme"}).json()["task_id"]
    body = wait_state(api, task_id, {"SUCCESS", "FAILURE"})
    assert body["state"] == "SUCCESS", body
    assert body["result"]["data_path"] == "s3://bucket/p.csv"
    assert len(body["result"]["profile"]["fingerprint"]) == 16


def test_unknown_task_is_a_400_listing_the_known_ones(api: API) -> None:
    response = api.post("/api/tasks", json={"task": "nope", "project_id": "acme"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "unknown task 'nope'" in error
    assert "k1.tasks.demo.flaky" in error and "k1.tasks.analyze_profile" in error


@pytest.mark.parametrize(("kwargs", "detail"), [
    ({"data": "not json", "headers": {"Content-Type": "application/json"}}, "malformed JSON"),
    ({"data": "task=x", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
     "expected 'application/json'"),
    ({"json": [1, 2]}, "got list"),
    ({}, "the body is empty"),
])
def test_a_body_that_is_not_a_json_object_is_a_400(api: API, kwargs: dict, detail: str) -> None:
    response = api.post("/api/tasks", **kwargs)
    assert response.status_code == 400
    assert response.json()["error"] == "request body must be a JSON object"
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(("body", "message"), [
    ({"project_id": None}, "project_id: must be a string"),
    ({"task": None}, "task: must be a string"),
    ({"task": ""}, "task: "),
    ({"args": {}}, "args: must be a JSON list"),
    ({"kwargs": []}, "kwargs: must be"),
    ({"kwargs": {"bogus": 1}}, "arguments do not match k1.tasks.demo.flaky"),
    ({"priority": 1}, "priority: unknown field"),
])
def test_bad_fields_are_named(api: API, body: dict, message: str) -> None:
    body = {"task": "k1.tasks.demo.flaky", "project_id": "acme", **body}
    response = api.post("/api/tasks", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_writes_need_a_valid_token(web: str) -> None:
    body = {"task": "k1.tasks.demo.flaky", "project_id": "acme"}
    anonymous = API(web, None).post("/api/tasks", json=body)
    assert anonymous.status_code == 401 and anonymous.json()["detail"] == "missing token"
    forged = API(web, "not.a.token").post("/api/tasks", json=body)
    assert forged.status_code == 401 and "invalid token" in forged.json()["detail"]


def test_a_token_reaches_only_its_own_projects(web: str, make_token, api: API) -> None:
    other = API(web, make_token("bob", "beta"))
    response = other.post("/api/tasks", json={"task": "k1.tasks.demo.flaky", "project_id": "acme"})
    assert response.status_code == 403
    task_id = api.post("/api/tasks", json={"task": "k1.tasks.demo.flaky",
                                           "project_id": "acme"}).json()["task_id"]
    # Another project's task answers exactly like an id K1 never issued: 404.
    hidden = other.get(f"/api/tasks/{task_id}")
    never = other.get("/api/tasks/00000000-0000-0000-0000-000000000000")
    assert (hidden.status_code, hidden.json()["error"]) == (404, "task not found")
    assert (never.status_code, never.json()["error"]) == (404, "task not found")


def test_unknown_task_id_is_a_404(api: API) -> None:
    response = api.get("/api/tasks/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and response.json()["error"] == "task not found"


@pytest.mark.parametrize(("body", "message"), [
    ({"kwargs": {"sleep_ms": 10_001}}, "sleep_ms: must be an integer from 0 to 10000"),
    ({"kwargs": {"sleep_ms": "5"}}, "sleep_ms: must be an integer"),
    ({"project_id": "a" * 256}, "project_id: "),
    ({"project_id": "acme\u0000"}, "project_id: printable characters only"),
    ({"project_id": "acme\n"}, "project_id: printable characters only"),
    ({"project_id": ""}, "project_id: "),
])
def test_unbounded_or_unstorable_input_is_a_400_naming_the_field(api: API, body: dict,
                                                                 message: str) -> None:
    body = {"task": "k1.tasks.demo.flaky", "project_id": "acme", **body}
    response = api.post("/api/tasks", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize("task", ["k1.conductor.report_outcome", "k1.dlq.drain_spool"])
def test_internal_tasks_cannot_be_started_by_clients(api: API, web: str, make_token,
                                                     task: str) -> None:
    response = api.post("/api/tasks", json={"task": task, "project_id": "acme"})
    assert response.status_code == 400 and f"unknown task {task!r}" in response.json()["error"]
    operator = API(web, make_token("root", "*"))
    response = operator.post("/api/tasks", json={"task": task, "project_id": "acme"})
    assert response.status_code == 400 and f"unknown task {task!r}" in response.json()["error"]


@pytest.mark.parametrize("task", ["k1.conductor.prune_executions", "k1.conductor.compensate"])
def test_a_project_token_cannot_start_platform_wide_work(api: API, task: str) -> None:
    # Private (400) or operator-only (403): never started for a project token.
    response = api.post("/api/tasks", json={"task": task, "project_id": "acme",
                                            "kwargs": {"workflow_id": "w"}
                                            if task.endswith("compensate") else {}})
    assert response.status_code in (400, 403), response.text


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("raw", "detail"), [
    ('{"task": "k1.tasks.demo.flaky", "project_id": "acme", "args": ' + nested(100_000) + "}",
     "nested deeper than"),
    ('{"task": "k1.tasks.demo.flaky", "project_id": "acme", "args": ' + nested(40) + "}",
     "nested deeper than 32"),
    ('{"task": "k1.tasks.demo.flaky", "project_id": "acme", "args": [NaN]}', "NaN"),
    ('{"task": "k1.tasks.demo.flaky", "project_id": "acme", "args": [1e400]}', "too large"),
    ('{"task": "k1.tasks.demo.flaky", "project_id": "acme", "args": ["\\ud800"]}',
     "surrogate"),
])
def test_bodies_no_code_can_handle_are_refused_at_the_door(api: API, raw: str,
                                                            detail: str) -> None:
    response = api.post("/api/tasks", data=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "request body must be a JSON object"
    assert detail in response.json()["detail"]


def test_every_field_at_fault_is_named(api: API) -> None:
    response = api.post("/api/tasks", json={"task": 7, "project_id": None, "args": "x",
                                            "extra": 1})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == ("task: must be a string, got 7; args: must be a JSON list; "
                             "project_id: must be a string, got None; extra: unknown field")
    assert body["detail"]["field"] == "task"
    assert {e["field"] for e in body["detail"]["errors"]} == {"task", "project_id", "args",
                                                              "extra"}


def test_a_wrong_method_is_a_405_that_says_which_are_allowed(api: API) -> None:
    response = api.put("/api/tasks", json={})
    assert response.status_code == 405 and response.json()["error"] == "method not allowed"
    assert "POST" in response.headers["Allow"]


def test_a_body_past_one_mebibyte_is_a_413(api: API) -> None:
    response = api.post("/api/tasks", json={"task": "k1.tasks.demo.flaky", "project_id": "acme",
                                            "kwargs": {"key": "x" * (1024 * 1024)}})
    assert response.status_code == 413 and response.json()["error"] == "request entity too large"
