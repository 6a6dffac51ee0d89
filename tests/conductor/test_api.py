"""POST /api/workflows/<name>/start and GET /api/workflows against the real stack."""

from __future__ import annotations

import json

import pytest
import requests

from k1.conductor.client import ConductorClient, ConductorRejected, ConductorUnavailable
from tests.conductor.conftest import wait_for_workflow
from tests.support import wait_for


def session(token: str | None) -> requests.Session:
    http = requests.Session()
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    return http


def test_start_returns_the_workflow_id_and_the_list_shows_it(
        bridge, conductor_web: str, conductor: ConductorClient, make_token, unique: str) -> None:
    api = session(make_token("ada", "acme"))
    response = api.post(f"{conductor_web}/api/workflows/profile_workflow/start",
                        json={"project_id": "acme",
                              "input": {"data_path": f"s3://k1/{unique}-api.csv"}}, timeout=30)
    assert response.status_code == 201, response.text
    workflow_id = response.json()["workflow_id"]
    workflow = wait_for_workflow(conductor, workflow_id, "COMPLETED")
    assert workflow["input"]["project_id"] == "acme"

    listing = api.get(f"{conductor_web}/api/workflows", timeout=30).json()
    names = {d["name"]: d for d in listing["definitions"]}
    assert names["profile_workflow"]["registered_versions"] == [1]
    assert "k1.tasks.analyze_profile" in names["profile_workflow"]["tasks"]
    assert names["profile_workflow"]["operator_only"] is False
    assert names["maintenance_workflow"]["operator_only"] is True
    mine = [e for e in listing["executions"] if e["workflow_id"] == workflow_id]
    assert mine and mine[0]["status"] == "COMPLETED" and mine[0]["name"] == "profile_workflow"
    assert all(e["project_id"] == "acme" for e in listing["executions"])

    other = session(make_token("bob", "other")).get(f"{conductor_web}/api/workflows",
                                                     timeout=30).json()
    assert workflow_id not in {e["workflow_id"] for e in other["executions"]}


def test_start_is_refused_with_reasons(conductor_web: str, make_token) -> None:
    url = f"{conductor_web}/api/workflows/profile_workflow/start"
    assert session(None).post(url, json={"project_id": "acme"}, timeout=10).status_code == 401
    api = session(make_token("ada", "acme"))
    assert api.post(url, json={"project_id": "other"}, timeout=10).status_code == 403
    bad = api.post(url, json={"project_id": "acme", "input": [1]}, timeout=10)
    assert bad.status_code == 400 and "input" in bad.json()["error"]
    missing = api.post(f"{conductor_web}/api/workflows/no_such_workflow/start",
                       json={"project_id": "acme"}, timeout=10)
    assert missing.status_code == 404, missing.text


# --------------------------------------------------------------------------- bad input


def web_breaker(conductor_web: str, operator_token: str) -> dict:
    """The ``conductor`` breaker as the web process's Redis has it."""
    rows = session(operator_token).get(f"{conductor_web}/api/breakers",
                                       timeout=30).json()["breakers"]
    return next((b for b in rows if b["name"] == "conductor"),
                {"state": "closed", "fail_counter": 0})


BAD_STARTS = [  # (body, the field the answer must name)
    ({"project_id": "acme", "version": 2**31}, "version"),
    ({"project_id": "acme", "version": 0}, "version"),
    ({"project_id": "acme", "version": "1"}, "version"),
    ({"project_id": "acme", "input": [1]}, "input"),
    ({"project_id": "acme", "input": {"n": 2**64}}, "input.n"),
    ({"project_id": "acme", "input": {"text": "a\u0000b"}}, "input.text"),
    ({"project_id": "acme", "input": {"big": "x" * (70 * 1024)}}, "input"),
]
TOO_DEEP = {"project_id": "acme", "input": {"deep": json.loads("[" * 40 + "]" * 40)}}


@pytest.mark.parametrize(("body", "field"), BAD_STARTS,
                         ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_STARTS)])
def test_a_start_that_cannot_be_valid_is_400_naming_the_field(
        conductor_web: str, make_token, body: dict, field: str) -> None:
    api = session(make_token("ada", "acme"))
    response = api.post(f"{conductor_web}/api/workflows/profile_workflow/start", json=body,
                        timeout=30)
    assert response.status_code == 400, response.text
    answer = response.json()
    named = answer["detail"]["field"]  # the deep one names the level where it went too deep
    assert named == field or named.startswith(f"{field}["), answer
    assert answer["error"].startswith(f"{named}:"), answer


def test_a_start_nested_too_deep_is_400_before_it_is_parsed(conductor_web: str,
                                                            make_token) -> None:
    # The body's JSON is refused as a whole (k1.web.contract's parser bounds nesting at the
    # same depth as Conductor inputs), so no field can be named: the answer says why.
    api = session(make_token("ada", "acme"))
    response = api.post(f"{conductor_web}/api/workflows/profile_workflow/start",
                        json=TOO_DEEP, timeout=30)
    assert response.status_code == 400, response.text
    assert "deep" in response.text, response.text


def test_one_tenants_bad_starts_never_open_the_shared_breaker(
        conductor_web: str, conductor: ConductorClient, make_token) -> None:
    """The probe: version 2^31 (Conductor answers 500 for it), more times than the
    breaker's fail_max (5), through the API and past K1's checks.
    """
    from k1.recovery import breakers

    operator = make_token("ops", "*")
    api = session(make_token("mallory", "acme"))
    for _ in range(8):
        response = api.post(f"{conductor_web}/api/workflows/profile_workflow/start",
                            json={"project_id": "acme", "version": 2**31}, timeout=30)
        assert response.status_code == 400, response.text  # not 202 "deferred"
    state = web_breaker(conductor_web, operator)
    assert state["state"] == "closed" and state["fail_counter"] == 0, state

    # The same request sent past K1's checks (this process's breaker): Conductor's own
    # 500 blames the request, so it is refused, not retried, and not counted.
    conductor.list_workflow_defs()  # a success: the count starts at 0
    for _ in range(8):
        with pytest.raises(ConductorRejected) as refused:
            conductor._call("POST", "/workflow",
                            json={"name": "profile_workflow", "version": 2**31, "input": {}})
        assert refused.value.status == 500, refused.value
        assert not isinstance(refused.value, ConductorUnavailable)
    mine = breakers.status("conductor")
    assert mine is not None and mine.state == "closed" and mine.fail_counter == 0, mine

    good = api.post(f"{conductor_web}/api/workflows/profile_workflow/start",
                    json={"project_id": "acme"}, timeout=30)
    assert good.status_code == 201, good.text


# --------------------------------------------------------------------------- exposure


def test_an_operator_only_workflow_is_refused_to_project_tokens(
        bridge, conductor_web: str, conductor: ConductorClient, make_token) -> None:
    url = f"{conductor_web}/api/workflows/maintenance_workflow/start"
    project = session(make_token("ada", "acme"))
    refused = project.post(url, json={"project_id": "acme"}, timeout=30)
    assert refused.status_code == 403, refused.text
    operator = session(make_token("ops", "*"))
    with_project = operator.post(url, json={"project_id": "acme"}, timeout=30)
    assert with_project.status_code == 400 and "project_id" in with_project.json()["error"]
    started = operator.post(url, json={"input": {"older_than_days": 30}}, timeout=30)
    assert started.status_code == 201, started.text
    workflow = wait_for_workflow(conductor, started.json()["workflow_id"], "COMPLETED")
    assert "project_id" not in workflow["input"]


def test_the_start_task_refuses_an_operator_only_workflow_for_a_project(
        bridge, conductor_web: str, make_token) -> None:
    """POST /api/tasks cannot reach maintenance_workflow through the public start task."""
    api = session(make_token("ada", "acme"))
    response = api.post(f"{conductor_web}/api/tasks", json={
        "task": "k1.conductor.start_workflow", "project_id": "acme",
        "kwargs": {"name": "maintenance_workflow"}}, timeout=30)
    assert response.status_code in (200, 201, 202), response.text
    task_id = response.json()["task_id"]

    def finished() -> dict | None:
        body = api.get(f"{conductor_web}/api/tasks/{task_id}", timeout=10).json()
        return body if body["state"] in ("SUCCESS", "FAILURE") else None

    body = wait_for(finished, timeout=60, message=f"start task {task_id} never finished")
    assert body["state"] == "FAILURE" and body["error"]["type"] == "OperatorOnly", body


def test_platform_wide_tasks_are_not_public() -> None:
    from k1.celery import app, load_task_modules

    load_task_modules()
    assert app.tasks["k1.conductor.prune_executions"].operator_only is True
    assert app.tasks["k1.conductor.compensate"].public is False
    assert app.tasks["k1.conductor.report_outcome"].public is False
    assert app.tasks["k1.conductor.start_workflow"].public is True
