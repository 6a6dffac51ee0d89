"""POST /api/workflows/<name>/start and GET /api/workflows against the real stack."""

from __future__ import annotations

import requests

from k1.conductor.client import ConductorClient
from tests.conductor.conftest import wait_for_workflow


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
