"""GET /api/tasks: filters, q, keyset paging, token scoping, awkward arguments."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.conftest import API

T0 = time.time() - 3600


def records_of(task_id: str, project: str, at: float, *, state: str, worker: str,
               args: list[Any], error: str | None = None) -> list[dict[str, Any]]:
    def rec(kind: str, offset: float, **fields: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4().hex, "type": kind, "task_id": task_id, "ts": at + offset,
                "attempt": 1, "task_name": "k1.tasks.demo.flaky", "project_id": project,
                "user_id": "ada", "worker": worker, **fields}

    records = [rec("submitted", 0, args=args, kwargs={"project_id": project}),
               rec("received", 0.1), rec("started", 0.2)]
    if state == "SUCCESS":
        records.append(rec("succeeded", 0.3, result="ok"))
    elif state == "FAILURE":
        records.append(rec("failed", 0.3, exception="ValueError", message=error))
    return records


@pytest.fixture
def history(services: dict[str, object], unique: str) -> dict[str, Any]:
    """25 tasks of project A (w1/w2, success/failure), 5 of project B, written directly."""
    from k1.history.store import write

    projects = (f"a{unique}", f"b{unique}")
    tasks: dict[str, dict[str, Any]] = {}
    records = []
    for n in range(30):
        task_id = f"{unique}-{n:03d}-{uuid.uuid4().hex[:8]}"
        project = projects[0] if n < 25 else projects[1]
        state = "FAILURE" if n % 5 == 0 else "SUCCESS"
        worker = f"w{n % 2 + 1}@{unique}"
        error = f"bad input {unique} number {n}" if state == "FAILURE" else None
        args = [f"needle-{unique}"] if n == 7 else [n]
        tasks[task_id] = {"project": project, "state": state, "worker": worker, "n": n}
        records += records_of(task_id, project, T0 + n, state=state, worker=worker,
                              args=args, error=error)
    # NUL, a lone surrogate and an over-long name must not break the batch's insert.
    awkward = f"{unique}-awkward"
    records += records_of(awkward, projects[0], T0 + 40, state="SUCCESS", worker="w" * 400,
                          args=["nul\x00here", "lone \udc80 surrogate"])
    assert write(records) == len(records)
    assert write(records) == 0  # delivered twice: nothing new
    return {"projects": projects, "tasks": tasks, "awkward": awkward}


def ids(api: API, **params: Any) -> list[str]:
    response = api.get("/api/tasks", params=params)
    assert response.status_code == 200, response.text
    return [item["task_id"] for item in response.json()["items"]]


def test_filters_and_q(web: str, make_token, history: dict[str, Any],
                       unique: str) -> None:
    a, _b = history["projects"]
    api = API(web, make_token("ada", a))
    tasks = history["tasks"]
    mine = sorted((t for t, v in tasks.items() if v["project"] == a),
                  key=lambda t: -tasks[t]["n"])
    every = ids(api, project_id=a, limit=100)
    assert every[1:] == mine and every[0] == history["awkward"]  # newest first
    failed = ids(api, project_id=a, state="FAILURE")
    assert failed == [t for t in mine if tasks[t]["state"] == "FAILURE"]
    on_w2 = ids(api, project_id=a, worker=f"w2@{unique}", limit=100)
    assert on_w2 == [t for t in mine if tasks[t]["worker"].startswith("w2@")]
    (needle,) = [t for t in mine if tasks[t]["n"] == 7]
    assert ids(api, q=f"needle-{unique}") == [needle]  # text in arguments
    in_error = ids(api, q=f"{unique} number 10")
    assert in_error == [t for t in mine if tasks[t]["n"] == 10]  # text in errors
    assert ids(api, q=needle[:-4]) == [needle]  # a task id prefix
    window = ids(api, project_id=a, since=_iso(T0 + 10), until=_iso(T0 + 13))
    assert window == [t for t in mine if 10 <= tasks[t]["n"] < 13]
    assert ids(api, project_id=a, task="k1.tasks.other") == []


def test_keyset_pages_cover_every_task_once(web: str, make_token,
                                            history: dict[str, Any]) -> None:
    a, _b = history["projects"]
    api = API(web, make_token("ada", a))
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"project_id": a, "limit": 7, **({"cursor": cursor} if cursor else {})}
        body = api.get("/api/tasks", params=params).json()
        seen += [item["task_id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids(api, project_id=a, limit=100) and len(seen) == 26


def test_a_token_sees_its_projects_only(web: str, make_token,
                                        history: dict[str, Any]) -> None:
    a, b = history["projects"]
    api = API(web, make_token("ada", a))
    tasks = history["tasks"]
    theirs = next(t for t, v in tasks.items() if v["project"] == b)
    unscoped = ids(api, q=theirs.split("-")[0], limit=100)
    assert unscoped and all(tasks.get(t, {"project": a})["project"] == a for t in unscoped)
    assert api.get(f"/api/tasks/{theirs}").status_code == 404
    assert api.get("/api/tasks", params={"project_id": b}).status_code == 403
    operator = API(web, make_token("ops", "*"))
    assert theirs in ids(operator, q=theirs.split("-")[0], limit=100)
    body = operator.get(f"/api/tasks/{theirs}").json()  # the backend never knew it
    assert body["state"] == tasks[theirs]["state"] and body["attempts"][0]["attempt"] == 1


def test_awkward_arguments_are_stored_escaped(web: str, make_token,
                                              history: dict[str, Any]) -> None:
    a, _b = history["projects"]
    body = API(web, make_token("ada", a)).get(f"/api/tasks/{history['awkward']}").json()
    assert body["state"] == "SUCCESS"
    (item,) = API(web, make_token("ada", a)).get(
        "/api/tasks", params={"q": history["awkward"]}).json()["items"]
    assert item["args"] == ["nul\\x00here", "lone \\udc80 surrogate"]
    assert len(item["worker"]) == 255


@pytest.mark.parametrize("params, field", [
    ({"state": "SLEEPING"}, "state"), ({"since": "yesterday"}, "since"),
    ({"limit": "0"}, "limit"), ({"cursor": "!!"}, "cursor"), ({"colour": "red"}, "colour"),
])
def test_bad_filters_are_400_naming_the_field(api: API, params: dict[str, str],
                                              field: str) -> None:
    response = api.get("/api/tasks", params=params)
    assert response.status_code == 400 and field in response.json()["error"], response.text


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_ids_history_cannot_hold_are_404_not_database_errors(api: API) -> None:
    for task_id in ("nul%00here", "lone%ED%B2%80", "x" * 300):
        response = api.get(f"/api/tasks/{task_id}")
        assert response.status_code == 404, (task_id, response.text)
