"""/api/scheduler/jobs against the real web process, one real beat and the real worker."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime

import pytest
import redis
import requests

from tests.conftest import API
from tests.scheduling.conftest import LOOP_INTERVAL, fires, wait_fires
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("module_beat", "worker")


def job(api: API, name: str) -> dict:
    response = api.get(f"/api/scheduler/jobs/{name}")
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def cleanup(operator_api: API):
    names: list[str] = []
    yield names
    for name in names:
        operator_api.delete(f"/api/scheduler/jobs/{name}")


@pytest.fixture
def fired_events(services):
    seen: list[dict] = []
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    pubsub = client.pubsub(ignore_subscribe_messages=True)

    def handle(message: dict) -> None:
        body = json.loads(message["data"])
        if body.get("event") == "schedule_fired":
            seen.extend(body["data"])

    pubsub.subscribe(**{"k1-socketio": handle})
    thread = pubsub.run_in_thread(sleep_time=0.05, daemon=True)
    yield seen
    thread.stop()
    thread.join(5)
    pubsub.close()
    client.close()


def test_a_schedule_created_through_the_api_fires_and_runs_its_task(
        api: API, cleanup: list[str], unique: str, fired_events: list[dict]) -> None:
    name = f"api-{unique}"
    cleanup.append(name)
    created = time.time()
    response = api.post("/api/scheduler/jobs", json={
        "name": name, "task": "k1.tasks.demo.flaky", "every": 2, "project_id": "acme",
        "kwargs": {"sleep_ms": 5}})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["description"] == "Every 2 seconds" and body["state"] == "active"
    first_due = datetime.fromisoformat(body["next_run_at"]).timestamp()
    assert created <= first_due <= created + 3

    done = wait_for(lambda: job(api, name)["last_status"] == "SUCCESS" and job(api, name),
                    timeout=20, message=lambda: f"never ran: {job(api, name)}")
    fire = fires(name)[0]
    assert abs(fire["due_at"] - first_due) < 0.01 and fire["on_time"]
    assert fire["fired_at"] - fire["due_at"] < 2.5
    task = api.get(f"/api/tasks/{done['last_task_id']}").json()
    assert task["state"] == "SUCCESS" and task["result"]["project_id"] == "acme"
    assert done["uptime"]["due"] >= 1 and done["uptime"]["on_time"] >= 1

    event = wait_for(lambda: [e for e in fired_events if e["schedule"] == name],
                     timeout=10, message="no schedule_fired event")[0]
    assert event["type"] == "fired" and event["task_name"] == "k1.tasks.demo.flaky"
    assert event["project_id"] == "acme" and event["task_id"] == fire["task_id"]
    assert event["due_at"] == pytest.approx(fire["due_at"])


def test_an_update_changes_the_next_fire_without_a_restart(
        api: API, cleanup: list[str], unique: str) -> None:
    name = f"upd-{unique}"
    cleanup.append(name)
    body = api.post("/api/scheduler/jobs", json={
        "name": name, "task": "k1.tasks.demo.flaky", "every": 3600, "project_id": "acme"}).json()
    assert datetime.fromisoformat(body["next_run_at"]).timestamp() > time.time() + 3500

    changed_at = time.time()
    response = api.patch(f"/api/scheduler/jobs/{name}", json={"every": 2})
    assert response.status_code == 200, response.text
    assert response.json()["every"] == 2 and response.json()["cron"] is None
    fire = wait_fires(name, 1, timeout=10)[0]
    assert fire["fired_at"] - changed_at < 5  # the brief's bound: effect within 5 s

    response = api.patch(f"/api/scheduler/jobs/{name}",
                         json={"cron": "0 9 * * 1-5", "timezone": "America/New_York"})
    assert response.status_code == 200, response.text
    runs = [datetime.fromisoformat(t) for t in response.json()["next_runs"]]
    assert response.json()["every"] is None and len(runs) == 5
    assert all(t.hour == 9 and t.minute == 0 and t.weekday() < 5 for t in runs)
    assert {t.utcoffset().total_seconds() / 3600 for t in runs} <= {-5, -4}


def test_pause_stops_fires_and_resume_restarts_them(
        api: API, cleanup: list[str], unique: str) -> None:
    name, clock = f"pause-{unique}", f"clock-{unique}"
    cleanup += [name, clock]
    for schedule in (name, clock):  # the clock keeps firing: the same beat's loops, seen
        created = api.post("/api/scheduler/jobs", json={
            "name": schedule, "task": "k1.tasks.demo.flaky", "every": 1, "project_id": "acme"})
        assert created.status_code == 201, created.text
    wait_fires(name, 1, timeout=10)
    paused = api.patch(f"/api/scheduler/jobs/{name}", json={"enabled": False}).json()
    paused_at = time.time()
    assert paused["state"] == "paused" and paused["next_run_at"] is None

    def clock_fires_after(moment: float) -> list[dict]:
        return [f for f in fires(clock) if f["due_at"] > moment]

    # A fire racing the pause may still land, from a beat loop that began before it; the
    # clock's fire due a loop after the pause comes from a later loop, which saw the pause.
    wait_for(lambda: clock_fires_after(paused_at + LOOP_INTERVAL), timeout=15,
             message=lambda: f"the clock stopped firing: {fires(clock)[-3:]}")
    count, settled = len(fires(name)), time.time()
    # Four due times pass while paused, with beat firing the clock at each of them.
    wait_for(lambda: len(clock_fires_after(settled)) >= 4, timeout=20,
             message=lambda: f"the clock fired {len(clock_fires_after(settled))} of 4 times")
    assert len(fires(name)) == count, fires(name)

    resumed_at = time.time()
    assert api.patch(f"/api/scheduler/jobs/{name}", json={"enabled": True}).status_code == 200
    fire = wait_fires(name, 1, timeout=10, after=count)[count]
    assert fire["due_at"] >= resumed_at and fire["due_count"] == 1  # the pause is not "missed"


def test_the_list_describes_cron_and_gives_five_fire_times_in_the_zone(
        api: API, operator_api: API, cleanup: list[str], unique: str) -> None:
    name = f"paris-{unique}"
    cleanup.append(name)
    response = api.post("/api/scheduler/jobs", json={
        "name": name, "task": "k1.tasks.analyze_profile", "cron": "30 2 * * *",
        "timezone": "Europe/Paris", "kwargs": {"data_path": "s3://b/p.csv"},
        "project_id": "acme", "catch_up": "skip"})
    assert response.status_code == 201, response.text
    listed = {j["name"]: j for j in api.get("/api/scheduler/jobs").json()["jobs"]}
    entry = listed[name]
    assert entry["description"] == "At 02:30 AM (Europe/Paris)"
    assert entry["catch_up"] == "skip" and entry["timezone"] == "Europe/Paris"
    runs = [datetime.fromisoformat(t) for t in entry["next_runs"]]
    assert len(runs) == 5 and all((t.hour, t.minute) == (2, 30) for t in runs)
    assert {t.utcoffset().total_seconds() / 3600 for t in runs} <= {1, 2}
    assert runs == sorted(runs) and len({t.date() for t in runs}) == 5


def test_run_now_returns_a_task_id_and_records_the_run(
        api: API, cleanup: list[str], unique: str) -> None:
    name = f"run-{unique}"
    cleanup.append(name)
    api.post("/api/scheduler/jobs", json={
        "name": name, "task": "k1.tasks.demo.flaky", "every": 3600, "project_id": "acme"})
    response = api.post(f"/api/scheduler/jobs/{name}/run")
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    wait_for(lambda: api.get(f"/api/tasks/{task_id}").json()["state"] == "SUCCESS",
             timeout=20, message="run-now task never succeeded")
    body = wait_for(lambda: job(api, name)["last_status"] and job(api, name), timeout=10,
                    message="run-now outcome never recorded")
    assert body["last_task_id"] == task_id and body["last_status"] == "SUCCESS"
    assert fires(name) == [] and body["uptime"]["due"] == 0  # not a fire of its timing


BASE = {"task": "k1.tasks.demo.flaky", "every": 10, "project_id": "acme"}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"cron": "61 * * * *", "every": None}, "cron", "invalid cron expression"),
    ({"cron": "* * *", "every": None}, "cron", "expected 5 fields"),
    ({"cron": "0 0 30 2 *", "every": None}, "cron", "invalid cron expression"),
    ({"task": "k1.nope"}, "task", "unknown task 'k1.nope'"),
    ({"timezone": "Mars/Olympus"}, "timezone", "unknown time zone"),
    ({"every": 0}, "every", "must be positive"),
    ({"every": -5}, "every", "must be positive"),
    ({"every": "10"}, "every", "must be a number"),
    ({"every": 2e11}, "every", "at most 31622400"),  # used to be saved, then break the list
    ({"every": 10**30}, "every", "at most 31622400"),
    ({"every": 1.5e308}, "every", "at most 31622400"),
    ({"project_id": ""}, "project_id", "empty"),
    ({"project_id": None}, "project_id", "runs for a project"),
    ({"cron": "* * * * *"}, "cron, every", "got both"),
    ({"every": None}, "cron, every", "got neither"),
    ({"args": {"a": 1}}, "args", "must be a JSON list"),
    ({"kwargs": [1]}, "kwargs", "must be a JSON object"),
    ({"kwargs": {"bogus": 1}}, "args, kwargs", "unexpected keyword argument 'bogus'"),
    ({"catch_up": "all"}, "catch_up", "must be one of once, skip"),
    ({"enabled": "yes"}, "enabled", "must be true or false"),
    ({"priority": 3}, "priority", "unknown field"),
])
def test_bad_input_is_a_400_naming_the_field_and_leaves_nothing(
        api: API, unique: str, change: dict, field: str, words: str) -> None:
    from k1.scheduling.entry import entry_key, schedule_id
    from k1.scheduling.store import ScheduleStore

    name = f"bad-{unique}"
    response = api.post("/api/scheduler/jobs", json={"name": name, **BASE, **change})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"].startswith(f"{field}: ") and words in body["error"], body
    assert body["detail"]["field"] == field
    assert not ScheduleStore().redis.exists(entry_key(schedule_id("acme", name)))
    assert api.get(f"/api/scheduler/jobs/{name}").status_code == 404


@pytest.mark.parametrize(("raw", "names_every"), [
    ('{"every": ' + "9" * 400 + "}", True),  # an integer Python's JSON reads: every's bounds
    ('{"every": 1e400}', False),  # not finite: the API's JSON parser refuses it first
    ('{"every": NaN}', False),
    ('{"every": -Infinity}', False),
])
def test_numbers_json_cannot_hold_are_a_400_and_leave_nothing(
        api: API, unique: str, raw: str, names_every: bool) -> None:
    name = f"huge-{unique}"
    body = json.dumps({"name": name, "task": BASE["task"], "project_id": "acme"})
    body = body[:-1] + ", " + raw[1:]
    response = api.post("/api/scheduler/jobs", data=body,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    if names_every:
        assert response.json()["detail"]["field"] == "every", response.text
    assert api.get(f"/api/scheduler/jobs/{name}").status_code == 404


def test_a_stored_schedule_that_cannot_be_computed_is_listed_with_its_error(
        api: API, operator_api: API, cleanup: list[str], unique: str) -> None:
    """Written before the bounds existed, or by hand in Redis: the list still answers, and
    shows the broken schedule with an error to those who may see it."""
    from k1.scheduling.entry import entry_key, schedule_id
    from k1.scheduling.store import ScheduleStore

    store = ScheduleStore()
    good, huge, garbled = f"good-{unique}", f"huge-{unique}", f"garbled-{unique}"
    cleanup.extend([good, huge, garbled])
    for name in (good, huge, garbled):
        body = {"name": name, **BASE, "every": 1 if name == good else 10}
        assert api.post("/api/scheduler/jobs", json=body).status_code == 201
    key = entry_key(schedule_id("acme", huge))
    definition = json.loads(store.redis.hget(key, "definition"))
    definition["schedule"]["every"] = 2e11  # what the API accepted before
    store.redis.hset(key, "definition", json.dumps(definition))
    store.redis.hset(entry_key(schedule_id("acme", garbled)), "definition", "{not json")

    mine = api.get("/api/scheduler/jobs")
    assert mine.status_code == 200, mine.text
    listed = {j["name"]: j for j in mine.json()["jobs"]}
    assert listed[good]["next_run_at"] and "error" not in listed[good]
    assert "error" in listed[huge] and listed[huge]["next_runs"] == [], listed[huge]
    assert listed[huge]["project_id"] == "acme"
    assert "error" in listed[garbled] and listed[garbled]["project_id"] == "acme"
    everything = operator_api.get("/api/scheduler/jobs")
    assert everything.status_code == 200, everything.text
    listed = {j["name"]: j for j in everything.json()["jobs"]}
    assert "error" in listed[huge] and "error" in listed[garbled]
    one = api.get(f"/api/scheduler/jobs/{huge}")
    assert one.status_code == 200 and "error" in one.json(), one.text
    fixed = api.patch(f"/api/scheduler/jobs/{huge}", json={"every": 60})
    assert fixed.status_code == 200 and "error" not in fixed.json(), fixed.text
    wait_fires(good, 2, timeout=15, after=len(fires(good)))  # beat keeps firing the others
    assert operator_api.delete(f"/api/scheduler/jobs/{garbled}").status_code == 204


def test_bad_updates_and_duplicates_change_nothing(
        api: API, cleanup: list[str], unique: str) -> None:
    name = f"dup-{unique}"
    cleanup.append(name)
    assert api.post("/api/scheduler/jobs", json={"name": name, **BASE}).status_code == 201
    before = job(api, name)

    duplicate = api.post("/api/scheduler/jobs", json={"name": name, **BASE, "every": 99})
    assert duplicate.status_code == 409 and "exists already" in duplicate.json()["error"]
    assert duplicate.json()["detail"]["field"] == "name"
    bad = api.patch(f"/api/scheduler/jobs/{name}", json={"every": 5, "timezone": "Nowhere/X"})
    assert bad.status_code == 400 and bad.json()["detail"]["field"] == "timezone"
    rename = api.patch(f"/api/scheduler/jobs/{name}", json={"name": "other"})
    assert rename.status_code == 400 and rename.json()["detail"]["field"] == "name"
    after = job(api, name)
    assert (after["every"], after["timezone"], after["next_run_at"]) == (
        before["every"], before["timezone"], before["next_run_at"])
    assert api.patch("/api/scheduler/jobs/nope-missing", json={"every": 5}).status_code == 404


def test_writes_need_a_token_for_the_project_and_builtins_an_operator(
        web: str, api: API, operator_api: API, make_token, cleanup: list[str],
        unique: str) -> None:
    name = f"auth-{unique}"
    cleanup.append(name)
    body = {"name": name, **BASE}
    assert API(web, None).post("/api/scheduler/jobs", json=body).status_code == 401
    other = API(web, make_token("bob", "beta"))
    assert other.post("/api/scheduler/jobs", json=body).status_code == 403
    assert api.post("/api/scheduler/jobs", json=body).status_code == 201
    assert name not in {j["name"] for j in other.get("/api/scheduler/jobs").json()["jobs"]}
    # Another project's schedule answers exactly as a missing one: nothing says it exists.
    missing = f"missing-{unique}"
    for method, suffix, payload in (("get", "", None), ("patch", "", {"every": 5}),
                                    ("delete", "", None), ("post", "/run", None)):
        theirs = getattr(other, method)(f"/api/scheduler/jobs/{name}{suffix}", json=payload)
        absent = getattr(other, method)(f"/api/scheduler/jobs/{missing}{suffix}", json=payload)
        assert theirs.status_code == absent.status_code == 404, (method, theirs.text)
        assert theirs.text.replace(name, "N") == absent.text.replace(missing, "N")
    assert job(api, name)["every"] == 10  # and nothing changed
    moved = api.patch(f"/api/scheduler/jobs/{name}", json={"project_id": "beta"})
    assert moved.status_code == 400  # the project is part of the address
    assert moved.json()["detail"]["field"] == "project_id"

    # A project-less schedule (like the built-ins) is for operators only.
    internal = f"ops-{unique}"
    cleanup.append(internal)
    ops_body = {"name": internal, "task": "k1.tasks.demo.flaky", "every": 60,
                "kwargs": {"project_id": "ops"}}
    assert api.post("/api/scheduler/jobs", json=ops_body).status_code == 403
    assert operator_api.post("/api/scheduler/jobs", json=ops_body).status_code == 201
    assert internal not in {j["name"] for j in api.get("/api/scheduler/jobs").json()["jobs"]}
    assert api.get(f"/api/scheduler/jobs/{internal}").status_code == 404
    assert api.delete(f"/api/scheduler/jobs/{internal}").status_code == 404
    assert operator_api.delete(f"/api/scheduler/jobs/{internal}").status_code == 204
    assert operator_api.delete(f"/api/scheduler/jobs/{internal}").status_code == 404


def test_names_are_scoped_per_project_and_reveal_nothing_across_them(
        web: str, api: API, operator_api: API, make_token, cleanup: list[str],
        unique: str) -> None:
    name = f"mine-{unique}"
    cleanup.append(name)
    beta = API(web, make_token("bob", "beta"))
    ours = api.post("/api/scheduler/jobs", json={"name": name, **BASE})
    assert ours.status_code == 201, ours.text
    # The same name in another project: created, as if the first did not exist.
    theirs = beta.post("/api/scheduler/jobs",
                       json={"name": name, **BASE, "every": 20, "project_id": "beta"})
    assert theirs.status_code == 201, theirs.text
    try:
        assert job(api, name)["every"] == 10 and job(beta, name)["every"] == 20
        assert api.patch(f"/api/scheduler/jobs/{name}", json={"every": 30}).status_code == 200
        assert job(beta, name)["every"] == 20  # each token reaches its own
        again = beta.post("/api/scheduler/jobs",
                          json={"name": name, **BASE, "project_id": "beta"})
        assert again.status_code == 409  # taken in the caller's own project
        # An operator reaches both: the project picks one.
        ambiguous = operator_api.get(f"/api/scheduler/jobs/{name}")
        assert ambiguous.status_code == 409, ambiguous.text
        assert ambiguous.json()["detail"]["projects"] == ["acme", "beta"]
        picked = operator_api.get(f"/api/scheduler/jobs/{name}?project_id=beta")
        assert picked.status_code == 200 and picked.json()["every"] == 20
        assert beta.get(f"/api/scheduler/jobs/{name}?project_id=acme").status_code == 404
        listed = [(j["name"], j["project_id"])
                  for j in operator_api.get("/api/scheduler/jobs").json()["jobs"]]
        assert (name, "acme") in listed and (name, "beta") in listed
    finally:
        assert beta.delete(f"/api/scheduler/jobs/{name}").status_code == 204
    assert job(api, name)["every"] == 30  # the other project's delete left ours


def test_concurrent_creates_of_one_name_save_exactly_one(
        api: API, cleanup: list[str], unique: str) -> None:
    name = f"race-{unique}"
    cleanup.append(name)
    codes: list[int] = []

    def create(every: int) -> None:  # a session per thread
        response = requests.post(f"{api.base}/api/scheduler/jobs", timeout=10,
                                 headers=dict(api.session.headers),
                                 json={"name": name, **BASE, "every": every})
        codes.append(response.status_code)

    threads = [threading.Thread(target=create, args=(10 + i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [201, 409, 409, 409]
