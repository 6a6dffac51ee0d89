"""Replaying a dead letter with edited arguments (POST /api/dlq/<id>/replay with args or
kwargs): checked like a new submission, scoped like every letter route, and recorded in
history as an edited replay of the letter. Real PostgreSQL, Redis, worker and recorder."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from k1.recovery.dlq.store import DeadLetterStore
from tests.conftest import API
from tests.history.conftest import recorder, wait_history  # noqa: F401  # the fixture
from tests.recovery.conftest import post_task, wait_letter
from tests.support import Process

store = DeadLetterStore()
FLAKY = "k1.tasks.demo.flaky"


def seed(project: str, task: str = FLAKY, **fields: Any) -> int:
    now = datetime.now(UTC)
    row = {"task_id": str(uuid.uuid4()), "task_name": task, "queue": "celery", "args": [],
           "kwargs": {"project_id": project, "permanent": True}, "project_id": project,
           "user_id": "ada", "exception_type": "NonRetryableError", "exception_message": "x",
           "traceback": "Traceback...", "attempts": 1, "first_failed_at": now,
           "died_at": now, **fields}
    letter_id = store.record(row).letter_id
    assert letter_id is not None
    return letter_id


@pytest.fixture
def project(services, make_token, web) -> tuple[str, API]:
    name = f"edit-{uuid.uuid4().hex[:8]}"
    return name, API(web, make_token("bea", name))


@pytest.mark.parametrize(("body", "field", "problem"), [
    ({"kwargs": {"colour": "red"}}, "kwargs", "unexpected keyword argument 'colour'"),
    # the letter's kwargs name the project: a positional one is a second value for it
    ({"args": ["p"]}, "args", "multiple values for argument 'project_id'"),
    ({"args": [1], "kwargs": {"fail_times": 2}}, "kwargs", "multiple values for argument"),
    ({"kwargs": {"sleep_ms": -1}}, "kwargs", "sleep_ms: must be an integer from 0 to 10000"),
    ({"kwargs": {"project_id": "someone-else"}}, "kwargs", "is not the letter's project"),
    ({"args": "[]"}, "args", "must be a JSON list"),
    ({"kwargs": ["permanent"]}, "kwargs", "must be a JSON object"),
])
def test_edited_arguments_are_checked_like_a_submission(
        project: tuple[str, API], body: dict[str, Any], field: str, problem: str) -> None:
    name, api = project
    letter_id = seed(name)
    response = api.post(f"/api/dlq/{letter_id}/replay", json=body)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"].startswith(f"{field}: "), answer
    assert answer["detail"]["field"] == field and problem in answer["error"], answer
    shown = api.get(f"/api/dlq/{letter_id}").json()
    assert (shown["status"], shown["replay_task_id"]) == ("dead", None)  # nothing was sent


def test_only_a_task_the_token_may_start_can_be_edited(project: tuple[str, API],
                                                        web: str, make_token) -> None:
    name, api = project
    private = seed(name, task="k1.dlq.enforce_retention", kwargs={})
    platform = seed(name, task="k1.conductor.prune_executions", kwargs={})
    refused = api.post(f"/api/dlq/{private}/replay", json={"kwargs": {}})
    assert refused.status_code == 403 and "replay its letter unchanged" in refused.json()["error"]
    refused = api.post(f"/api/dlq/{platform}/replay", json={"args": []})
    assert refused.status_code == 403 and "operators only" in refused.json()["error"]
    operator = API(web, make_token("ops", "*"))
    refused = operator.post(f"/api/dlq/{private}/replay", json={"kwargs": {}})
    assert refused.status_code == 403, refused.text  # not public: nobody chooses its arguments
    for letter_id in (private, platform):
        assert api.get(f"/api/dlq/{letter_id}").json()["status"] == "dead"


def test_another_projects_letter_is_404_edited_or_not(project: tuple[str, API]) -> None:
    _, api = project
    foreign = seed(f"other-{uuid.uuid4().hex[:6]}")
    edited = api.post(f"/api/dlq/{foreign}/replay", json={"kwargs": {"permanent": False}})
    assert edited.status_code == 404, edited.text
    assert api.post(f"/api/dlq/{foreign}/replay", json={"kwargs": {"colour": 1}}
                    ).status_code == 404  # scope first: its task's signature is not told
    assert store.get(foreign).status == "dead"


def test_an_edit_replaces_repaired_arguments_but_not_a_replayed_letters_refusal(
        project: tuple[str, API]) -> None:
    name, api = project
    repaired = seed(name, args=["nul\x00"])  # stored escaped: the letter notes the repair
    assert store.get(repaired).repairs
    plain = api.post(f"/api/dlq/{repaired}/replay", json={})
    assert plain.status_code == 409 and "args" in plain.json()["error"]
    kwargs_only = api.post(f"/api/dlq/{repaired}/replay", json={"kwargs": {"permanent": True}})
    assert kwargs_only.status_code == 409  # the repaired args would still be sent
    edited = api.post(f"/api/dlq/{repaired}/replay", json={"args": []})
    assert edited.status_code == 200, edited.text
    assert edited.json()["edited"] == ["args"] and edited.json()["status"] == "replayed"
    again = api.post(f"/api/dlq/{repaired}/replay", json={"args": []})
    assert again.status_code == 409 and "replayed already" in again.json()["error"]


def test_an_edited_replay_runs_and_history_records_it_as_one(
        web: str, make_token, worker: Process, recorder: Process) -> None:  # noqa: F811
    project = f"edit-{uuid.uuid4().hex[:8]}"
    api = API(web, make_token("ada", project))
    task_id = post_task(api, FLAKY, project, permanent=True)
    letter = wait_letter(task_id)
    editor = API(web, make_token("bea", project))
    replayed = editor.post(f"/api/dlq/{letter.id}/replay",
                           json={"kwargs": {"permanent": False, "key": f"edited {project}"}})
    assert replayed.status_code == 200, replayed.text
    answer = replayed.json()
    assert answer["edited"] == ["kwargs"] and answer["replay_count"] == 1
    body = wait_history(editor, answer["replay_task_id"], lambda b: b["state"] == "SUCCESS"
                        and b["links"]["replay_edited"] == ["kwargs"])
    assert body["links"]["replay_of"] == str(letter.id)
    assert body["user_id"] == "bea"  # who edited the arguments vouches for them
    assert body["result"]["project_id"] == project
    found = editor.get("/api/tasks", params={"q": f"edited {project}"}).json()["items"]
    assert [item["task_id"] for item in found] == [answer["replay_task_id"]]
    assert found[0]["kwargs"] == {"project_id": project, "permanent": False,
                                  "key": f"edited {project}"}
    assert found[0]["replay_of"] == str(letter.id) and found[0]["replay_edited"] == ["kwargs"]
    plain = wait_history(api, task_id, lambda b: b["links"]["dead_letter_id"])
    assert plain["links"]["replay_edited"] is None
