"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

No browser is downloaded: Playwright drives /usr/bin/chromium (`make test` installs it).
Every panel is checked against data the test made through the real servers: the routes
exist, so a panel showing an error, or nothing, fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import requests

from tests.conftest import API, k1_process
from tests.events.sockets import transition
from tests.support import ROOT, VENV_BIN, Process, free_port, wait_for

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
MakeToken = Callable[..., str]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "artifacts" / "dashboard.png"  # the whole page; each tab: dashboard-<tab>.png
MODULES = ROOT / "k1" / "web" / "static" / "dashboard"
FLAKY = "k1.tasks.demo.flaky"
# Markup that runs script if it is ever parsed as HTML: it must show as these characters.
HOSTILE = '<img src=x onerror="window.__k1_xss=1">'
# The ways a script turns a string into markup: the modules use none of them.
HTML_SINKS = re.compile(
    r"\.(inner|outer)HTML\b|insertAdjacentHTML|document\.write|createContextualFragment")
DLQ_PAGE = 50  # PAGE_SIZE in panels/dlq.js
# A token short enough to wait for, long enough for a loaded machine to sign in with it.
TOKEN_TTL_S = 15
DEAD_WITHIN = 60  # s: a failing task dies after its retries (about 4 s on an idle machine)
FLEET_SHOWN_MS = 20_000  # a running task reaches the Workers tab within 5 s + 3 s when idle


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab; a script error on the page fails the test that used it."""
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(base + "/")
    page.fill("#token-input", token)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#connection")).to_have_text("live")


def show_project(page: Page, project: str) -> None:
    """Show ``project`` (an operator types it) and wait until the server confirmed the
    subscription: from then on, that project's events reach the page."""
    if page.locator("#project-input").is_visible():
        page.fill("#project-input", project)
        page.dispatch_event("#project-input", "change")
    else:
        page.select_option("#project-select", project)
    expect(page.locator("#connection")).to_have_attribute("data-subscribed", project)


def open_tab(page: Page, tab: str) -> None:
    page.click(f'.tabs button[data-tab="{tab}"]')
    expect(page.locator(f"#tab-{tab}")).to_be_visible()


def screenshot_tabs(page: Page, tab: str) -> None:
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.locator(".tabs-panel").screenshot(path=str(SCREENSHOT.with_stem(f"dashboard-{tab}")))


def dead_letter(api: API, project: str, task_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        items = api.get(f"/api/dlq?project_id={project}").json()["items"]
        return next((i for i in items if i["task_id"] == task_id), None)

    return wait_for(find, timeout=DEAD_WITHIN, message=f"no dead letter for {task_id}")


def test_the_page_and_its_files_need_no_token(web: str) -> None:
    page = requests.get(web + "/", timeout=10)
    assert page.status_code == 200 and "K1 dashboard" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert '<script type="module" src="/static/dashboard/main.js">' in page.text
    modules = sorted(MODULES.rglob("*.js"))
    assert len(modules) > 5, modules
    paths = [f"/static/dashboard/{m.relative_to(MODULES)}" for m in modules]
    for path in paths:  # a module served as anything but JavaScript is refused by the browser
        response = requests.get(web + path, timeout=10)
        assert response.status_code == 200, path
        assert response.headers["Content-Type"].startswith("text/javascript"), path
    for path in ("/static/dashboard.css", "/static/vendor/socket.io.min.js",
                 "/static/vendor/chart.umd.min.js"):
        assert requests.get(web + path, timeout=10).status_code == 200, path
    assert "cdn" not in page.text.lower()
    for module in modules:  # server text enters the page as text only (el(), textContent)
        assert not HTML_SINKS.search(module.read_text()), module


def test_sign_in_and_watch_a_task_live(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    project = f"live-{unique}"
    token = make_token(f"ada-{unique}", project, "acme")
    sign_in(page, web, token)
    expect(page.locator("#project-select")).to_be_visible()
    show_project(page, project)
    expect(page.locator("#banner")).not_to_have_class("banner unknown")
    expect(page.locator("#metric-cards .card")).to_have_count(6)

    api = API(web, token)
    task_id = api.post("/api/tasks", json={"task": FLAKY, "project_id": project}).json()["task_id"]
    rows = page.locator(f'#feed li[data-task-id="{task_id}"]')
    expect(rows.and_(page.locator('[data-type="succeeded"]'))).to_be_visible()
    expect(rows).to_have_count(3)
    expect(page.locator('#counters .t-succeeded b')).to_have_text("1")
    failing = api.post("/api/tasks", json={"task": FLAKY, "project_id": project,
                                           "kwargs": {"permanent": True}}).json()["task_id"]
    expect(page.locator(f'#feed li[data-task-id="{failing}"][data-type="failed"]')).to_be_visible()
    # the dead event refreshes the DLQ panel
    expect(page.locator(f'#dlq-table tr[data-task-id="{failing}"]')).to_be_visible()

    # text from events is shown as text, never parsed as HTML
    transition("started", task_id=f"xss-{unique}", task_name=HOSTILE,
         project_id=project)
    row = page.locator(f'#feed li[data-task-id="xss-{unique}"]')
    expect(row).to_contain_text(HOSTILE)
    assert page.evaluate("window.__k1_xss") is None
    assert row.locator("img").count() == 0

    success = page.locator('#metric-cards .card[data-metric="task_success_rate"] .value')
    expect(success).not_to_have_text("n/a")  # the metrics follow the tasks
    expect(page.locator("#chart-throughput")).to_be_visible()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_replay_a_dead_letter_with_a_click(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    project = f"dlq-{unique}"
    token = make_token(f"ada-{unique}", project)
    api = API(web, token)
    task_id = api.post("/api/tasks", json={"task": FLAKY, "project_id": project,
                                           "kwargs": {"permanent": True}}).json()["task_id"]
    dead = dead_letter(api, project, task_id)
    sign_in(page, web, token)
    row = page.locator(f'#dlq-table tr[data-letter-id="{dead["id"]}"]')
    expect(row).to_be_visible()
    expect(page.locator("#dlq-stats")).to_contain_text("dead")
    row.get_by_role("button", name="Details").click()
    traceback = page.locator("#dlq-table .detail pre.traceback")
    expect(traceback).to_contain_text("NonRetryableError")
    # Another task of the project dies: the table is drawn again with its letter, and the
    # details open before stay open.
    other = api.post("/api/tasks", json={"task": FLAKY, "project_id": project,
                                         "kwargs": {"permanent": True}}).json()["task_id"]
    second = dead_letter(api, project, other)
    expect(page.locator(f'#dlq-table tr[data-letter-id="{second["id"]}"]')).to_be_visible()
    expect(traceback).to_have_count(1)
    expect(traceback).to_contain_text("NonRetryableError")
    row.locator('button[data-action="replay"]').click()
    expect(row).to_have_count(0)  # it left the list of dead letters
    replayed = api.get(f"/api/dlq/{dead['id']}").json()
    assert replayed["status"] == "replayed" and replayed["replay_task_id"]


def test_markup_in_a_dead_letter_or_a_project_id_is_text(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    project = f"esc-{unique}"
    token = make_token(f"ada-{unique}", project, HOSTILE)
    api = API(web, token)
    # transient failures until the retries run out: the exception message carries `key`
    task_id = api.post("/api/tasks", json={"task": FLAKY, "project_id": project, "kwargs": {
        "fail_times": 100, "key": f"{unique} {HOSTILE}"}}).json()["task_id"]
    dead = dead_letter(api, project, task_id)
    assert HOSTILE in dead["exception_message"]

    sign_in(page, web, token)
    expect(page.locator("#project-select option", has_text=HOSTILE)).to_have_count(1)
    show_project(page, project)
    row = page.locator(f'#dlq-table tr[data-letter-id="{dead["id"]}"]')
    expect(row).to_be_visible()
    row.get_by_role("button", name="Details").click()
    expect(page.locator("#dlq-table .detail h3").first).to_contain_text(HOSTILE)
    expect(page.locator("#dlq-table .detail pre.traceback")).to_contain_text(HOSTILE)
    screenshot_tabs(page, "dlq")
    assert page.locator("img").count() == 0
    assert page.evaluate("window.__k1_xss") is None


def test_the_dlq_panel_pages_with_load_more(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    from k1.tasks.submissions import submit

    project = f"pages-{unique}"
    token = make_token(f"ada-{unique}", project)
    api = API(web, token)
    for _ in range(DLQ_PAGE + 1):  # straight to the broker: no API write limit in the way
        submit(FLAKY, kwargs={"permanent": True}, project_id=project)
    wait_for(lambda: api.get("/api/dlq/stats").json()["depth"] == DLQ_PAGE + 1,
             timeout=DEAD_WITHIN, message=f"{DLQ_PAGE + 1} dead letters never arrived")

    sign_in(page, web, token)
    rows = page.locator("#dlq-table tbody tr")
    expect(rows).to_have_count(DLQ_PAGE)
    page.locator("#dlq-body button.more").click()
    expect(rows).to_have_count(DLQ_PAGE + 1)
    expect(page.locator("#dlq-body button.more")).to_have_count(0)  # that was the last page
    ids = rows.evaluate_all("rows => rows.map(r => r.dataset.letterId)")
    assert len(set(ids)) == DLQ_PAGE + 1, ids


def test_the_page_reconnects_and_resynchronises_after_a_restart(
        page: Page, services: dict[str, object], make_token: MakeToken, unique: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start() -> Process:
        process = k1_process(f"web-restart-{port}", sys.executable, "-m", "k1.web",
                             env={"PORT": str(port)}).start()
        process.wait_until(lambda: requests.get(base + "/api/health", timeout=2).ok, 60,
                           "health never answered 200")
        return process

    project = f"restart-{unique}"
    web = start()
    try:
        sign_in(page, base, make_token(f"ada-{unique}", project))
        show_project(page, project)
        web.stop()
        expect(page.locator("#connection")).to_have_text("offline")
        expect(page.locator("#banner")).not_to_have_class("banner ok")
        web = start()
        # subscribed again on its own: a project event reaches the reconnected page
        expect(page.locator("#connection")).to_have_attribute("data-subscribed", project,
                                                              timeout=60_000)
        transition("received", task_id=f"after-{unique}", task_name="probe",
             project_id=project)
        expect(page.locator(f'#feed li[data-task-id="after-{unique}"]')).to_be_visible()
    finally:
        web.stop()


def test_every_panel_shows_what_the_api_has(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    """A breaker, a schedule, a workflow run and a dead letter made by the test each
    appear in their panel, and the panels' buttons act on them."""
    from k1.conductor.executions import remember
    from k1.recovery.breakers import BreakerOpen, breaker

    project = f"ops-{unique}"
    token = make_token(f"op-{unique}", "*")
    api = API(web, token)
    breaker_name = f"dash-{unique}"
    with pytest.raises(BreakerOpen):  # the failure that trips it is refused as open
        breaker(breaker_name, fail_max=1).call(lambda: 1 / 0)
    schedule = f"dash-{unique}"
    created = api.post("/api/scheduler/jobs", json={"name": schedule, "task": FLAKY,
                                                    "every": 3600, "project_id": project})
    assert created.status_code == 201, created.text
    workflow_id = f"wf-{unique}"
    remember(workflow_id, "profile_workflow", version=1, project_id=project)
    task_id = api.post("/api/tasks", json={"task": FLAKY, "project_id": project,
                                           "kwargs": {"permanent": True}}).json()["task_id"]
    dead = dead_letter(api, project, task_id)

    sign_in(page, web, token)
    show_project(page, project)

    open_tab(page, "breakers")
    tripped = page.locator(f'#breakers-body tr[data-breaker="{breaker_name}"]')
    expect(tripped.locator(".badge")).to_have_text("open")
    screenshot_tabs(page, "breakers")
    tripped.get_by_role("button", name="Reset").click()
    expect(tripped.locator(".badge")).to_have_text("closed")

    open_tab(page, "schedules")
    job = page.locator(f'#schedules-body tr[data-job="{schedule}"]')
    described = api.get(f"/api/scheduler/jobs/{schedule}").json()["description"]
    expect(job.locator('td[title="every 3600 s"]')).to_have_text(described)
    expect(job).to_contain_text(project)
    screenshot_tabs(page, "schedules")
    job.get_by_role("button", name="Pause").click()
    expect(job.locator(".badge.s-paused")).to_be_visible()
    assert api.get(f"/api/scheduler/jobs/{schedule}").json()["enabled"] is False

    open_tab(page, "workflows")
    expect(page.locator('#workflows-body tr[data-workflow="profile_workflow"]')).to_be_visible()
    run = page.locator(f'#workflows-body tr[data-workflow-id="{workflow_id}"]')
    expect(run).to_contain_text("profile_workflow v1")
    expect(run).to_contain_text(project)
    screenshot_tabs(page, "workflows")

    open_tab(page, "dlq")
    expect(page.locator(f'#dlq-table tr[data-letter-id="{dead["id"]}"]')).to_be_visible()

    for body in ("#breakers-body", "#schedules-body", "#workflows-body", "#dlq-body",
                 "#limits-body"):
        assert page.locator(f"{body} .error").count() == 0, page.locator(body).inner_text()


def test_the_limits_panel_shows_live_use_and_follows_limit_state(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    """A limit set at run time is listed, to an operator (its keys are argument values,
    which only operators see: tests/flow/test_api.py), with its live use while real tasks
    hold its slot; a saturate event updates the panel even while its tab
    is hidden (a hidden panel is not polled: only the event can have done it)."""
    from k1.flow.gate import give_back, take_slot
    from k1.flow.limits import Limit
    from tests.flow.conftest import send, until_workers_reread_limits, wait_runs

    name, key = f"dash-{unique}", f"{unique} {HOSTILE}"  # the key is the task's `tag`
    body = {"tasks": ["tests.flow.paced"], "per": "tag", "concurrency": 1, "rate": "600/m"}
    operator = API(web, make_token(f"op-{unique}", "*"))
    assert operator.put(f"/api/limits/{name}", json=body).status_code == 200
    try:
        sign_in(page, web, make_token(f"ada-{unique}", "*"))
        open_tab(page, "limits")
        row = page.locator(f'#limits-body tr[data-limit="{name}"]')
        expect(row).to_have_attribute("data-source", "runtime")
        cells = row.locator("td")
        for column, text in enumerate(["tests.flow.paced", "tag", "1", "600/m"], start=1):
            expect(cells.nth(column)).to_have_text(text)
        expect(cells.nth(5)).to_have_text("no key used in the last 24 h")

        until_workers_reread_limits()
        send("tests.flow.paced", 3, project_id=f"lim-{unique}", tag=key, ms=4000)
        use = row.locator("ul.usage li")
        expect(use).to_have_attribute("data-running", "1")
        expect(use).to_have_attribute("data-saturated", "true")  # the others found it taken
        expect(use.locator(".key")).to_have_text(key)
        expect(use).to_contain_text("1 / 1 running")
        screenshot_tabs(page, "limits")
        wait_runs(key, 3, timeout=120)
        expect(use).to_have_attribute("data-running", "0")  # polled: no event says it
        expect(use).to_have_attribute("data-saturated", "false")

        open_tab(page, "dlq")
        limit = Limit(name, **{k: v for k, v in body.items() if k != "tasks"})
        slot, _ = take_slot(limit, key)
        assert slot is not None
        try:
            assert take_slot(limit, key)[0] is None  # refused: the key saturates
            expect(use).to_have_attribute("data-saturated", "true")
            expect(use).to_have_attribute("data-running", "1")
            expect(page.locator('#feed li[data-type="limit"]').first).to_contain_text(
                f"limit {name} [{key}] saturated")
        finally:
            give_back(slot)
        expect(use).to_have_attribute("data-saturated", "false")  # the cleared event
        assert page.evaluate("window.__k1_xss") is None and page.locator("img").count() == 0
    finally:
        assert operator.delete(f"/api/limits/{name}").status_code == 200


def test_the_page_signs_out_when_its_token_expires(
        web: str, page: Page, make_token: MakeToken, unique: str) -> None:
    sign_in(page, web, make_token(f"ada-{unique}", f"exp-{unique}", ttl=TOKEN_TTL_S))
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator("#sign-in-error")).to_contain_text(
        "expired", timeout=(TOKEN_TTL_S + 30) * 1000)
    expect(page.locator("#app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('k1.token')") is None


def test_a_failed_sign_in_link_says_why_and_falls_back_to_the_form(web: str, page: Page) -> None:
    page.goto(web + "/#signin=not-a-real-token")
    expect(page.locator("#sign-in-error")).to_contain_text("The sign-in link did not work")
    expect(page.locator("#token-input")).to_be_visible()
    assert "signin" not in page.url and page.evaluate("location.hash") == ""
    assert page.evaluate("sessionStorage.getItem('k1.token')") is None
    page.locator("#sign-in").screenshot(path=str(SCREENSHOT.with_stem("dashboard-signin")))


def test_a_sign_in_link_signs_in_and_leaves_no_token_in_the_address(web: str, page: Page) -> None:
    # The route exists: without a sign-in token it is refused, not missing.
    assert requests.post(web + "/api/auth/exchange", timeout=10).status_code == 401
    printed = subprocess.run([str(VENV_BIN / "k1"), "token", "signin-link", "--base-url", web],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    link = re.search(r"(https?://\S+#signin=(\S+))", printed)
    assert link, f"no sign-in link in {printed!r}"
    page.goto(link.group(1))
    expect(page.locator("#connection")).to_have_text("live")
    assert page.url == web + "/", page.url
    session_token = page.evaluate("sessionStorage.getItem('k1.token')")
    assert session_token and session_token != link.group(2)
    assert API(web, session_token).get("/api/breakers").status_code == 200
    page.go_back()  # the history entry of the link no longer holds the token
    page.go_forward()
    assert "signin" not in page.url, page.url
    expect(page.locator("#connection")).to_have_text("live")  # signed in from sessionStorage


def test_the_forms_and_buttons_act(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    """Run a task, add a schedule, discard a dead letter, and a start that the server
    refuses (no Conductor configured in the tests) says why in its row."""
    project = f"forms-{unique}"
    token = make_token(f"ada-{unique}", project)
    api = API(web, token)
    sign_in(page, web, token)
    show_project(page, project)

    page.fill("#run-task-kwargs", '{"permanent": true}')
    page.click("#run-task button[type=submit]")
    expect(page.locator("#run-task-result")).to_contain_text("started")
    started = page.locator("#run-task-result").inner_text().split()[-1]
    dead = page.locator(f'#dlq-table tr[data-task-id^="{started}"]')
    expect(dead).to_be_visible(timeout=DEAD_WITHIN * 1000)
    discard = dead.locator('button[data-action="discard"]')
    discard.click()
    expect(discard).to_have_text("Confirm discard")
    discard.click()
    expect(dead).to_have_count(0)
    letters = api.get(f"/api/dlq?project_id={project}&status=discarded").json()["items"]
    assert [letter["task_id"][:8] for letter in letters] == [started]

    open_tab(page, "schedules")
    form = page.locator("#schedule-add")
    form.locator('[name="name"]').fill(f"form-{unique}")
    form.locator('[name="cron"]').fill("30 2 * * *")
    form.locator('[name="timezone"]').fill("Europe/Paris")
    form.get_by_role("button", name="Add").click()
    expect(page.locator("#schedule-add-result")).to_have_text("added")
    job = page.locator(f'#schedules-body tr[data-job="form-{unique}"]')
    saved = api.get(f"/api/scheduler/jobs/form-{unique}").json()
    expect(job.locator('td[title="cron 30 2 * * *"]')).to_have_text(saved["description"])
    assert (saved["project_id"], saved["cron"], saved["timezone"]) == (
        project, "30 2 * * *", "Europe/Paris")

    open_tab(page, "workflows")
    row = page.locator('#workflows-body tr[data-workflow="profile_workflow"]')
    row.get_by_role("button", name="Start").click()
    expect(row.locator(".note")).to_contain_text("conductor not configured")


def test_the_queues_and_workers_panels_show_the_fleet_live(
        web: str, worker: Process, page: Page, make_token: MakeToken, unique: str) -> None:
    """Real queued messages (a paused queue nobody consumes) and a real task running on the
    session worker; both panels follow changes while shown (polled: no event says so)."""
    from k1.broker import queue_lists
    from k1.celery import app
    from k1.connections import get_redis
    from tests.flow.conftest import send
    from tests.flow.tasks import STARTED

    queue = f"dash-{unique}"
    operator = API(web, make_token(f"op-{unique}", "*"))
    assert operator.post(f"/api/queues/{queue}/pause").status_code == 200
    try:
        for _ in range(2):
            app.send_task("tests.flow.hold", kwargs={"project_id": "x", "tag": unique},
                          queue=queue)
        sign_in(page, web, make_token(f"ada-{unique}", "*"))
        open_tab(page, "queues")
        row = page.locator(f'#queues-body tr[data-queue="{queue}"]')
        expect(row).to_have_attribute("data-depth", "2")
        expect(row.locator(".badge")).to_have_text("paused")
        expect(row.locator("td").nth(3)).not_to_have_text("0.0")  # 2 in over the last minute
        app.send_task("tests.flow.hold", kwargs={"project_id": "x", "tag": unique}, queue=queue)
        expect(row).to_have_attribute("data-depth", "3", timeout=FLEET_SHOWN_MS)  # polled
        screenshot_tabs(page, "queues")

        [task_id] = send("tests.flow.hold", 1, project_id=f"fleet-{unique}", tag=unique,
                         ms=10_000)
        # The session worker may still be busy with earlier tests' tasks: wait for the start.
        wait_for(lambda: get_redis().lrange(STARTED.format(unique), 0, -1), timeout=60,
                 message="the task never started")
        open_tab(page, "workers")
        host = page.locator('#workers-body tr[data-worker="worker@k1test"]')
        expect(host).to_contain_text("prefork, concurrency 2")
        running = host.locator(f'li[data-task-id="{task_id}"]')
        # Within an inspect interval (5 s) and a poll (3 s), with room for a loaded machine.
        expect(running).to_contain_text("tests.flow.hold", timeout=FLEET_SHOWN_MS)
        screenshot_tabs(page, "workers")
        expect(running).to_have_count(0, timeout=60_000)  # it ended: the panel follows
        assert page.locator("#queues-body .error, #workers-body .error").count() == 0
    finally:
        assert operator.post(f"/api/queues/{queue}/resume").status_code == 200
        get_redis().delete(*queue_lists(queue))
