"""The dashboard in a real headless Chromium (Debian's, driven by Playwright).

No browser is downloaded: Playwright drives /usr/bin/chromium (`make test` installs it).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest
import requests

from k1.events import emit
from tests.conftest import API, k1_process
from tests.support import ROOT, free_port, wait_for

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "artifacts" / "dashboard.png"
FLAKY = "k1.tasks.demo.flaky"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                             headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    yield page
    context.close()


def sign_in(page, base: str, token: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(base + "/")
    page.fill("#token-input", token)
    page.click("#sign-in-form button[type=submit]")
    expect(page.locator("#connection")).to_have_text("live")


def test_the_page_and_its_files_need_no_token(web) -> None:  # type: ignore[no-untyped-def]
    page = requests.get(web + "/", timeout=10)
    assert page.status_code == 200 and "K1 dashboard" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for path in ("/static/dashboard.js", "/static/dashboard.css",
                 "/static/vendor/socket.io.min.js", "/static/vendor/chart.umd.min.js"):
        assert requests.get(web + path, timeout=10).status_code == 200, path
    assert "cdn" not in page.text.lower()


def test_sign_in_and_watch_a_task_live(web, worker, page, make_token, unique):  # type: ignore[no-untyped-def]
    project = f"live-{unique}"
    token = make_token(f"ada-{unique}", project, "acme")
    sign_in(page, web, token)
    expect(page.locator("#project-select")).to_be_visible()
    page.select_option("#project-select", project)
    expect(page.locator("#banner")).not_to_have_class("banner unknown")
    expect(page.locator("#metric-cards .card")).to_have_count(6)

    api = API(web, token)
    task_id = api.post("/api/tasks", json={"task": FLAKY, "project_id": project}).json()["task_id"]
    rows = page.locator(f'#feed li[data-task-id="{task_id}"]')
    expect(rows.and_(page.locator('[data-type="succeeded"]'))).to_be_visible()
    expect(rows).to_have_count(3)
    failing = api.post("/api/tasks", json={"task": FLAKY, "project_id": project,
                                           "kwargs": {"permanent": True}}).json()["task_id"]
    expect(page.locator(f'#feed li[data-task-id="{failing}"][data-type="failed"]')).to_be_visible()
    if api.get("/api/dlq").status_code != 404:  # the dead event refreshes the DLQ panel
        expect(page.locator(f'#dlq-table tr[data-task-id="{failing}"]')).to_be_visible()

    # text from events is shown as text, never parsed as HTML
    hostile = '<img src=x onerror="window.__k1_xss=1">'
    emit("task_event", type="started", task_id=f"xss-{unique}", task_name=hostile,
         project_id=project)
    row = page.locator(f'#feed li[data-task-id="xss-{unique}"]')
    expect(row).to_contain_text(hostile)
    assert page.evaluate("window.__k1_xss") is None
    assert row.locator("img").count() == 0

    success = page.locator('#metric-cards .card[data-metric="task_success_rate"] .value')
    expect(success).not_to_have_text("n/a")  # the metrics follow the tasks
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert page.errors == []


def test_replay_a_dead_letter_with_a_click(web, worker, page, make_token, unique):  # type: ignore[no-untyped-def]
    project = f"dlq-{unique}"
    token = make_token(f"ada-{unique}", project)
    api = API(web, token)
    if api.get(f"/api/dlq?project_id={project}").status_code == 404:
        pytest.skip("the DLQ routes (GET /api/dlq ...) are missing on this server")
    task_id = api.post("/api/tasks", json={"task": FLAKY, "project_id": project,
                                           "kwargs": {"permanent": True}}).json()["task_id"]

    def letter() -> dict | None:
        items = api.get(f"/api/dlq?project_id={project}").json()["items"]
        return next((i for i in items if i["task_id"] == task_id), None)

    dead = wait_for(letter, timeout=60, message=f"no dead letter for {task_id}")
    sign_in(page, web, token)
    row = page.locator(f'#dlq-table tr[data-letter-id="{dead["id"]}"]')
    expect(row).to_be_visible()
    row.get_by_role("button", name="Details").click()
    expect(page.locator("#dlq-table .detail pre.traceback")).to_contain_text("NonRetryableError")
    row.locator('button[data-action="replay"]').click()
    expect(row).to_have_count(0)  # it left the list of dead letters
    replayed = api.get(f"/api/dlq/{dead['id']}").json()
    assert replayed["status"] == "replayed" and replayed["replay_task_id"]
    assert page.errors == []


def test_the_page_reconnects_and_resynchronises_after_a_restart(page, services, make_token, unique):  # type: ignore[no-untyped-def]
    port = free_port()
    base = f"http://127.0.0.1:{port}"

    def start():  # type: ignore[no-untyped-def]
        process = k1_process(f"web-restart-{port}", sys.executable, "-m", "k1.web",
                             env={"PORT": str(port)}).start()
        process.wait_until(lambda: requests.get(base + "/api/health", timeout=2).ok, 60,
                           "health never answered 200")
        return process

    project = f"restart-{unique}"
    web = start()
    try:
        sign_in(page, base, make_token(f"ada-{unique}", project))
        web.stop()
        expect(page.locator("#connection")).to_have_text("offline")
        expect(page.locator("#banner")).not_to_have_class("banner ok")
        web = start()
        expect(page.locator("#connection")).to_have_text("live", timeout=60_000)
        # subscribed again: a project event reaches the feed of the reconnected page
        emit("task_event", type="received", task_id=f"after-{unique}", task_name="probe",
             project_id=project)
        expect(page.locator(f'#feed li[data-task-id="after-{unique}"]')).to_be_visible()
    finally:
        web.stop()


def test_every_panel_renders_what_the_api_has(web, page, make_token, unique):  # type: ignore[no-untyped-def]
    """Breakers, schedules and workflows show their lists, or "not available" on a 404."""
    sign_in(page, web, make_token(f"op-{unique}", "*"))
    page.fill("#project-input", f"ops-{unique}")
    page.dispatch_event("#project-input", "change")
    for tab, body in (("breakers", "#breakers-body"), ("schedules", "#schedules-body"),
                      ("workflows", "#workflows-body"), ("dlq", "#dlq-body")):
        page.click(f'.tabs button[data-tab="{tab}"]')
        expect(page.locator(f"#tab-{tab}")).to_be_visible()
        expect(page.locator(f"{body} table, {body} .unavailable, {body} .error").first) \
            .to_be_visible()
        assert page.locator(f"{body} .error").count() == 0, page.locator(body).inner_text()
    assert page.errors == []
