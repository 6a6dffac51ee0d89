"""The DLQ routes and CLI on real PostgreSQL: filters, paging, scope, stats, retention."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from k1.db import session_scope
from k1.recovery.dlq.models import ALL_PROJECTS, DeadLetter, DepthSnapshot
from k1.recovery.dlq.store import DeadLetterStore
from tests.conftest import API
from tests.support import run_k1

store = DeadLetterStore()
NOW = datetime.now(UTC)


def letter(project: str, *, task: str = "k1.tasks.demo.flaky", exception: str = "TimeoutError",
           died_at: datetime | None = None) -> dict:
    died_at = died_at or datetime.now(UTC)
    return {
        "task_id": str(uuid.uuid4()), "task_name": task, "queue": "celery",
        "args": [], "kwargs": {"project_id": project}, "project_id": project, "user_id": "ada",
        "exception_type": exception, "exception_message": "boom", "traceback": "Traceback...",
        "attempts": 3, "first_failed_at": died_at - timedelta(seconds=5), "died_at": died_at,
        "worker": "w@test", "breaker_states": {"analysis": "closed"},
    }


@pytest.fixture
def project(services, make_token, web) -> tuple[str, API]:
    """A fresh project and a token that sees only it."""
    name = f"p-{uuid.uuid4().hex[:8]}"
    return name, API(web, make_token("ada", name))


def seed(project: str, count: int, **options) -> list[int]:
    died_at = options.pop("died_at", None)
    return [store.record(letter(project, died_at=died_at or NOW - timedelta(minutes=count - i),
                                **options)).letter_id for i in range(count)]


def test_list_filters_and_pages_with_a_cursor(project: tuple[str, API]) -> None:
    name, api = project
    ids = seed(name, 7)
    seed(name, 2, exception="HTTPError")
    seed(name, 1, task="k1.tasks.analyze_profile")
    page = api.get("/api/dlq", params={"project_id": name, "exception": "TimeoutError",
                                        "task": "k1.tasks.demo.flaky", "limit": 3}).json()
    seen = [item["id"] for item in page["items"]]
    while page["next_cursor"]:
        page = api.get("/api/dlq", params={"project_id": name, "exception": "TimeoutError",
                                            "limit": 3, "cursor": page["next_cursor"]}).json()
        seen += [item["id"] for item in page["items"]]
    assert seen == sorted(ids, reverse=True)  # newest death first, each once
    assert "traceback" not in page["items"][0]
    since = (NOW - timedelta(minutes=3)).isoformat()
    recent = api.get("/api/dlq", params={"project_id": name, "since": since}).json()["items"]
    # died 3, 2 and 1 minutes ago (7-letter batch), 2 and 1 (2-batch), 1 (1-batch)
    assert {i["died_at"] >= since for i in recent} == {True} and len(recent) == 6
    assert api.get("/api/dlq", params={"exception": "HTTPError"}).json()["items"][0][
        "project_id"] == name  # a project token is scoped without naming its project


@pytest.mark.parametrize(("params", "message"), [
    ({"colour": "red"}, "unknown filter(s): colour"),
    ({"since": "yesterday"}, "since: not an ISO-8601 date"),
    ({"limit": "-1"}, "limit: must be between 1 and 500, got -1"),
    ({"limit": "ten"}, "limit: expected an integer"),
    ({"status": "gone"}, "status: must be one of dead, replayed, discarded, all"),
    ({"cursor": "garbage!"}, "cursor: not a cursor this API issued"),
])
def test_bad_filters_are_a_400_naming_the_problem(api: API, params: dict, message: str) -> None:
    response = api.get("/api/dlq", params=params)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_a_token_sees_only_its_projects_letters(project: tuple[str, API], api: API) -> None:
    _, own = project
    [foreign] = seed(f"other-{uuid.uuid4().hex[:6]}", 1)
    assert own.get(f"/api/dlq/{foreign}").status_code == 404
    assert own.post(f"/api/dlq/{foreign}/replay").status_code == 404
    assert own.delete(f"/api/dlq/{foreign}").status_code == 404
    assert own.get("/api/dlq", params={"project_id": "acme"}).status_code == 403
    assert foreign not in [i["id"] for i in own.get("/api/dlq").json()["items"]]
    assert api.get("/api/dlq/999999999").status_code == 404


def test_stats_count_what_is_dead(project: tuple[str, API]) -> None:
    name, api = project
    seed(name, 3)
    seed(name, 2, exception="HTTPError", task="k1.tasks.analyze_profile")
    [discarded] = seed(name, 1)
    assert api.delete(f"/api/dlq/{discarded}").json()["status"] == "discarded"
    stats = api.get("/api/dlq/stats").json()
    assert stats["depth"] == 5
    assert stats["by_task"] == {"k1.tasks.demo.flaky": 3, "k1.tasks.analyze_profile": 2}
    assert stats["by_exception"] == {"TimeoutError": 3, "HTTPError": 2}
    assert stats["oldest_at"] < NOW.isoformat()
    listed = api.get("/api/dlq", params={"status": "discarded"}).json()["items"]
    assert [i["id"] for i in listed] == [discarded]


def test_daily_average_depth_comes_from_snapshots(project: tuple[str, API]) -> None:
    name, api = project
    ids = seed(name, 4)
    store.snapshot_depth()
    for letter_id in ids[:2]:
        store.discard(letter_id)
    store.snapshot_depth()
    with session_scope() as session:
        snapshots = session.scalar(select(func.count()).where(
            DepthSnapshot.project_id == ALL_PROJECTS,
            DepthSnapshot.taken_at >= datetime.now(UTC) - timedelta(days=1)))
    assert api.get("/api/dlq/stats").json()["daily_avg_depth"] == round(6 / snapshots, 2)


@pytest.mark.usefixtures("worker")
def test_bulk_replay_by_filter(project: tuple[str, API]) -> None:
    name, api = project
    ids = seed(name, 3, task="k1.tasks.demo.flaky")
    assert api.post("/api/dlq/replay", json={}).status_code == 400
    response = api.post("/api/dlq/replay", json={"project_id": name})
    assert response.status_code == 200 and response.json()["replayed"] == 3
    for letter_id in ids:
        shown = api.get(f"/api/dlq/{letter_id}").json()
        assert shown["status"] == "replayed" and shown["replay_task_id"]
    assert api.post("/api/dlq/replay", json={"project_id": name}).json()["replayed"] == 0


def test_retention_removes_expired_and_excess_letters_oldest_first(services) -> None:
    name = f"ret-{uuid.uuid4().hex[:6]}"
    expired = seed(name, 3, died_at=NOW - timedelta(days=40))
    oldest_kept = seed(name, 2, died_at=NOW - timedelta(days=20))
    recent = seed(name, 2)
    with session_scope() as session:
        total = session.scalar(select(func.count()).select_from(DeadLetter))
    removed = store.enforce_retention(max_age=timedelta(days=30), max_rows=total - 3 - 2)
    assert removed == {"expired": 3, "over_limit": 2}
    with session_scope() as session:
        left = set(session.scalars(select(DeadLetter.id).where(DeadLetter.project_id == name)))
    assert left == set(recent) and not left & set(expired + oldest_kept)


@pytest.mark.usefixtures("worker")
def test_retention_task_runs_on_the_worker() -> None:
    from k1.recovery.dlq.tasks import enforce_retention

    assert set(enforce_retention.delay().get(timeout=60)) == {"expired", "over_limit"}


@pytest.mark.usefixtures("worker")
def test_cli_lists_shows_replays_with_progress_and_purges(services) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    ids = seed(name, 4)
    listed = json.loads(run_k1("dlq", "list", "--project", name, "--json").stdout)
    assert [i["id"] for i in listed["items"]] == sorted(ids, reverse=True)
    shown = json.loads(run_k1("dlq", "show", str(ids[0])).stdout)
    assert shown["traceback"] == "Traceback..."
    stats = run_k1("dlq", "stats")
    assert "depth" in stats.stdout and "quarantined" in stats.stdout
    assert isinstance(json.loads(run_k1("dlq", "quarantine", "--json").stdout)["items"], list)
    replayed = run_k1("dlq", "replay", "--project", name)
    assert replayed.returncode == 0 and "replayed 4 letters" in replayed.stdout
    assert "replaying 4 letters" in replayed.stderr  # the progress bar
    bad = run_k1("dlq", "list", "--since", "soon")
    assert bad.returncode == 2 and "since: not an ISO-8601 date" in bad.stderr
    purged = run_k1("dlq", "purge", "--project", name, "--yes")
    assert "purged 4 letters" in purged.stdout
    assert run_k1("dlq", "show", str(ids[0])).returncode == 1
