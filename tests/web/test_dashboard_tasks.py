"""The dashboard's Tasks view and task page in a real headless Chromium, against the live
web process with a real worker and history recorder: search for a task, open it, see its
attempts, and replay its dead letter with edited arguments into a task that succeeds and
shows as an edited replay in history."""

from __future__ import annotations

import itertools
import json
import re
import time
from typing import TYPE_CHECKING

from tests.conftest import API
from tests.history.conftest import recorder, wait_history  # noqa: F401  # the fixture
from tests.support import ROOT, Process
from tests.web.test_dashboard import (  # noqa: F401  # the fixtures
    FLAKY,
    HOSTILE,
    MakeToken,
    browser,
    dead_letter,
    expect,
    page,
    show_project,
    sign_in,
)

if TYPE_CHECKING:
    from playwright.sync_api import Page

LOOK_PATIENCE_MS = 15_000  # past a look's wait: the request and render on a loaded machine


def search(page: Page, text: str) -> None:  # noqa: F811  # the fixture's name
    form = page.locator("#task-search")
    form.locator('[name="q"]').fill(text)
    form.get_by_role("button", name="Search").click()


def test_search_open_a_task_and_replay_its_dead_letter_edited(
        web: str, worker: Process, recorder: Process, page: Page,  # noqa: F811
        make_token: MakeToken, unique: str) -> None:
    project = f"hist-{unique}"
    token = make_token(f"ada-{unique}", project)
    api = API(web, token)
    needle = f"needle-{unique} {HOSTILE}"  # found by q; shown as text, never as markup
    failing = api.post("/api/tasks", json={"task": FLAKY, "project_id": project, "kwargs": {
        "permanent": True, "key": needle}}).json()["task_id"]
    other = api.post("/api/tasks", json={"task": FLAKY, "project_id": project}).json()["task_id"]
    letter = dead_letter(api, project, failing)
    wait_history(api, failing, lambda b: b["links"]["dead_letter_id"] == letter["id"])
    wait_history(api, other, lambda b: b["state"] == "SUCCESS" and b["attempts"])

    sign_in(page, web, token)
    show_project(page, project)
    rows = page.locator("#tasks-table tbody tr")
    expect(page.locator(f'#tasks-table tr[data-task-id="{other}"]')).to_be_visible()
    search(page, f"needle-{unique}")
    expect(rows).to_have_count(1)
    row = page.locator(f'#tasks-table tr[data-task-id="{failing}"]')
    expect(row).to_have_attribute("data-state", "FAILURE")
    page.locator("#task-search select[name=state]").select_option("SUCCESS")
    page.locator("#task-search").get_by_role("button", name="Search").click()
    expect(page.locator("#tasks-body")).to_contain_text("No task in history matches.")
    page.locator("#task-search select[name=state]").select_option("")
    search(page, f"needle-{unique}")

    # the task page: attempts, arguments, the error with its traceback, the dead letter
    row.locator("a.task-link").click()
    assert page.url.endswith(f"#task={failing}"), page.url
    head = page.locator(f'#task-page .task-head[data-task-id="{failing}"]')
    expect(head).to_have_attribute("data-state", "FAILURE")
    expect(head).to_contain_text(FLAKY)
    runs = page.locator("#task-page .timeline li")
    expect(runs).to_have_count(1)
    expect(runs.first).to_have_attribute("data-outcome", "dead")
    expect(runs.first).to_contain_text("NonRetryableError")
    expect(runs.first.locator(".bar")).to_be_visible()
    expect(page.locator("#task-page pre.arguments")).to_contain_text(json.dumps(needle))
    expect(page.locator("#task-page pre.traceback")).to_contain_text("NonRetryableError")
    expect(page.locator("#task-page .task-links .dead-letter")).to_contain_text(
        f"dead letter #{letter['id']}")
    expect(page.locator('#task-page [data-action="run-again"]')).to_be_visible()

    # an edit the server refuses names the field; nothing is replayed
    form = page.locator(f'#task-page form.edit-replay[data-letter-id="{letter["id"]}"]')
    form.locator('[name="kwargs"]').fill('{"permanent": false, "colour": "red"}')
    form.get_by_role("button", name="Replay edited").click()
    expect(form.locator(".error")).to_contain_text("kwargs: ")
    expect(form.locator(".error")).to_contain_text("unexpected keyword argument 'colour'")
    assert api.get(f"/api/dlq/{letter['id']}").json()["status"] == "dead"

    # the same form in the dead-letter view: the edit goes out and succeeds
    page.locator("#task-page button.back").click()
    expect(page.locator("#tasks-table")).to_be_visible()
    letter_row = page.locator(f'#dlq-table tr[data-letter-id="{letter["id"]}"]')
    letter_row.get_by_role("button", name="Details").click()
    dlq_form = page.locator(f'#dlq-table form.edit-replay[data-letter-id="{letter["id"]}"]')
    kwargs = dlq_form.locator('[name="kwargs"]')
    expect(kwargs).to_have_value(re.compile(r'"permanent": true'))  # the letter's, to edit
    kwargs.fill(kwargs.input_value().replace('"permanent": true', '"permanent": false'))
    dlq_form.get_by_role("button", name="Replay edited").click()
    expect(letter_row).to_have_count(0)  # replayed: it left the list of dead letters
    replay_id = api.get(f"/api/dlq/{letter['id']}").json()["replay_task_id"]
    body = wait_history(api, replay_id, lambda b: b["state"] == "SUCCESS" and b["attempts"])
    assert body["links"]["replay_of"] == str(letter["id"])
    assert body["links"]["replay_edited"] == ["kwargs"]

    # found by the same search, and its page says what it is
    search(page, f"needle-{unique}")
    expect(rows).to_have_count(2)
    replayed = page.locator(f'#tasks-table tr[data-task-id="{replay_id}"]')
    expect(replayed).to_have_attribute("data-state", "SUCCESS")
    replayed.locator("a.task-link").click()
    head = page.locator(f'#task-page .task-head[data-task-id="{replay_id}"]')
    expect(head).to_have_attribute("data-state", "SUCCESS")
    expect(page.locator("#task-page .timeline li").first).to_have_attribute(
        "data-outcome", "succeeded")
    origin = page.locator("#task-page .task-links .replay-of")
    expect(origin).to_contain_text(f"edited replay of dead letter #{letter['id']}")
    expect(origin).to_contain_text("changed: kwargs")
    expect(page.locator("#task-page pre.original-arguments")).to_contain_text('"permanent": true')
    expect(page.locator("#task-page pre.result")).to_contain_text(project)
    page.locator("#tasks").screenshot(path=str(ROOT / "artifacts" / "dashboard-task.png"))
    origin.locator("a.task-link").click()  # back to the task it replays
    expect(page.locator(f'#task-page .task-head[data-task-id="{failing}"]')).to_be_visible()
    expect(page.locator("#task-page .task-links .dead-letter")).to_contain_text(
        f"replayed as {replay_id}")
    expect(page.locator("#task-page .letter-actions")).to_have_count(0)  # replayed: no buttons

    # Run again: a new task with the same arguments (POST /api/tasks), opened at once
    page.locator('#task-page [data-action="run-again"]').click()
    again = page.locator("#task-page .task-head")
    expect(again).not_to_have_attribute("data-task-id", failing)
    expect(again).to_have_attribute("data-state", "FAILURE", timeout=60_000)
    again_id = again.get_attribute("data-task-id")
    assert page.url.endswith(f"#task={again_id}"), page.url
    wait_history(api, str(again_id), lambda b: b["kwargs"] == {
        "project_id": project, "permanent": True, "key": needle})
    assert page.evaluate("window.__k1_xss") is None and page.locator("img").count() == 0


def test_a_task_page_looks_less_often_while_nothing_happens_and_follows_the_events(
        web: str, worker: Process, recorder: Process, page: Page,  # noqa: F811
        make_token: MakeToken, unique: str) -> None:
    from k1.tasks.submissions import submit
    from tests.events.sockets import transition

    project, user = f"poll-{unique}", f"ada-{unique}"
    # Queued where no worker looks: it never starts, and its page never settles.
    waiting = submit(FLAKY, kwargs={"project_id": project}, project_id=project, user_id=user,
                     queue=f"nobody-{unique}")
    looks: list[float] = []
    page.on("request", lambda request: looks.append(time.monotonic()) if (
        request.method == "GET" and request.url.endswith(f"/api/tasks/{waiting}")) else None)
    sign_in(page, web, make_token(user, project))
    show_project(page, project)
    page.evaluate(f"location.hash = 'task={waiting}'")
    task_page = page.locator("#task-page")
    expect(task_page.locator(".task-head")).to_have_attribute("data-state", "PENDING")
    for wait_ms in (1000, 2000, 4000, 8000):  # each look without news waits twice as long
        expect(task_page).to_have_attribute("data-poll-ms", str(wait_ms),
                                            timeout=wait_ms + LOOK_PATIENCE_MS)
    gaps = [later - earlier for earlier, later in itertools.pairwise(looks)][-3:]
    assert len(gaps) == 3 and all(gap >= 0.9 * wait for gap, wait in zip(
        gaps, (1, 2, 4), strict=True)), f"looks {gaps} s apart"

    # An event of the task: the page looks a second later, and again a second after that.
    transition("received", task_id=waiting, project_id=project, user_id=user,
         state="RECEIVED")
    expect(task_page).to_have_attribute("data-poll-ms", "1000", timeout=LOOK_PATIENCE_MS)

    # A task that ends: once history has its run, the page stops looking.
    done = submit(FLAKY, kwargs={"project_id": project}, project_id=project, user_id=user)
    page.evaluate(f"location.hash = 'task={done}'")
    head = task_page.locator(f'.task-head[data-task-id="{done}"]')
    expect(head).to_have_attribute("data-state", "SUCCESS", timeout=60_000)
    expect(task_page.locator(".timeline li").first).to_have_attribute(
        "data-outcome", "succeeded", timeout=60_000)
    expect(task_page).not_to_have_attribute("data-poll-ms", re.compile(".*"))
