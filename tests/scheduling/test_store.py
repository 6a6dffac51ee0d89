"""The schedule store on the real Redis: built-ins, atomic writes, and the CLI."""

from __future__ import annotations

import pytest

from k1.scheduling import ScheduleConflict, ScheduleSpec, ScheduleStore
from k1.scheduling.builtins import BUILTINS, ensure_builtins
from tests.support import run_k1

pytestmark = pytest.mark.usefixtures("services")



def test_builtins_are_created_only_if_missing_and_only_for_registered_tasks(
        unique: str) -> None:
    store = ScheduleStore()
    ours = ScheduleSpec(f"builtin-{unique}", "k1.tasks.demo.flaky", every=3600,
                        kwargs={"project_id": "ops"}, builtin=True)
    absent = ScheduleSpec(f"later-{unique}", "k1.not_yet.registered", every=60, builtin=True)
    try:
        assert ensure_builtins(store, (ours, absent)) == [ours.name]
        assert ensure_builtins(store, (ours, absent)) == []
        current = store.get(ours.name)
        assert current.spec.builtin and current.spec.project_id is None
        store.replace(current, current.spec.patched({"every": 7200}, store.known_tasks()))
        ensure_builtins(store, (ours, absent))
        assert store.get(ours.name).spec.every == 7200  # an operator's change stands
        assert absent.name not in {s.name for s in store.list()}
    finally:
        store.delete(ours.name)


def test_the_builtin_definitions_name_the_agreed_tasks() -> None:
    tasks = {spec.name: (spec.task, spec.cron, spec.every) for spec in BUILTINS}
    assert tasks["dlq-retention"] == ("k1.dlq.enforce_retention", "0 2 * * *", None)
    assert tasks["dlq-spool-drain"] == ("k1.dlq.drain_spool", None, 30)
    assert tasks["dlq-depth-snapshot"][0] == "k1.dlq.snapshot_depth"
    assert tasks["nightly-workflow"][0] == "k1.conductor.start_workflow"
    assert all(spec.builtin and spec.project_id is None for spec in BUILTINS)


def test_an_update_computed_from_a_stale_read_is_refused(schedules) -> None:
    store = ScheduleStore()
    name = schedules(every=60)["name"]
    stale = store.get(name)
    store.replace(stale, stale.spec.patched({"every": 30}, store.known_tasks()))
    with pytest.raises(ScheduleConflict):
        store.replace(stale, stale.spec.patched({"every": 90}, store.known_tasks()))
    assert store.get(name).spec.every == 30


def test_cli_manages_schedules_and_reports_errors_with_exit_code_2(unique: str) -> None:
    name = f"cli-{unique}"
    added = run_k1("schedule", "add", name, "--task", "k1.tasks.demo.flaky", "--cron",
                   "0 6 * * 1", "--timezone", "Europe/Paris", "--project", "acme",
                   "--kwargs", '{"sleep_ms": 1}')
    assert added.returncode == 0, added.stderr
    assert "At 06:00 AM, only on Monday (Europe/Paris)" in added.stdout
    try:
        listed = run_k1("schedule", "list")
        line = next(row for row in listed.stdout.splitlines() if row.startswith(name))
        assert "active" in line and "0 6 * * 1 (Europe/Paris)" in line and "acme" in line
        assert run_k1("schedule", "pause", name).stdout.strip() == f"{name}: paused"
        assert "paused" in next(row for row in run_k1("schedule", "list").stdout.splitlines()
                                if row.startswith(name))
        assert "active; next run" in run_k1("schedule", "resume", name).stdout
        task_id = run_k1("schedule", "run", name).stdout.strip()
        assert len(task_id) == 36

        for args, message in [
            (("add", name, "--task", "k1.tasks.demo.flaky", "--every", "5", "--project",
              "acme"), f"schedule '{name}' exists already"),
            (("add", f"x-{unique}", "--task", "k1.tasks.demo.flaky", "--cron", "* *",
              "--project", "a"), "cron: invalid cron expression"),
            (("add", f"x-{unique}", "--task", "k1.tasks.demo.flaky", "--every", "5",
              "--project", "a", "--args", "[1,"), "args: not valid JSON"),
            (("pause", f"x-{unique}"), f"no schedule named 'x-{unique}'"),
        ]:
            done = run_k1("schedule", *args)
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert message in done.stderr, done.stderr
    finally:
        removed = run_k1("schedule", "rm", name)
    assert removed.returncode == 0 and removed.stdout.strip() == f"{name}: deleted"
    assert run_k1("schedule", "rm", name).returncode == 2


def test_the_next_due_time_counts_from_the_last_run_not_from_now() -> None:
    from datetime import UTC, datetime, timedelta

    from k1.celery import app
    from k1.scheduling.entry import K1Entry

    spec = ScheduleSpec("due", "k1.tasks.demo.flaky", every=3600, project_id="acme")
    last = datetime.now(UTC) - timedelta(minutes=50)
    entry = K1Entry.from_spec(spec, app, last_run_at=last)
    assert entry.due_at == last + timedelta(hours=1)  # RedBeat's own would say now + 10 min - 50
    assert K1Entry.from_spec(spec, app, last_run_at=last - timedelta(hours=2)).due_at <= (
        datetime.now(UTC))  # overdue: due now


def test_a_project_schedule_saved_under_its_bare_name_keeps_working(unique: str) -> None:
    """Saved before names were scoped per project (key ``k1:redbeat:<name>``): still found
    for its project, still taking its name there, and not in the way of other projects."""
    from datetime import UTC, datetime

    from k1.celery import app
    from k1.scheduling import AmbiguousSchedule, ScheduleExists
    from k1.scheduling.entry import K1Entry

    store = ScheduleStore()
    name = f"legacy-{unique}"
    body = {"name": name, "task": "k1.tasks.demo.flaky", "every": 60, "project_id": "acme"}
    spec = store.validate(body)
    K1Entry.from_spec(spec, app, last_run_at=datetime.now(UTC), sid=name).save()
    try:
        found = store.get(name, "acme")
        assert found.id == name and found.spec.project_id == "acme"
        with pytest.raises(ScheduleExists):
            store.create(spec)
        other = store.create(store.validate({**body, "project_id": "beta"}))
        assert other is not None and other.id == f"beta:{name}"
        with pytest.raises(AmbiguousSchedule):
            store.get(name)
        assert store.pause(name, "acme").spec.enabled is False
        assert store.get(name, "beta").spec.enabled is True
    finally:
        store.delete(name, "acme")
        store.delete(name, "beta")


def test_running_a_project_less_schedule_now_sends_through_the_one_send_path(
        unique: str) -> None:
    """Run now of a built-in goes through k1.tasks.submissions.send, as beat's fires do:
    its submission is on the task history stream, with the operator who ran it and the
    schedule it came from (a direct apply_async recorded nothing)."""
    import json

    from k1.connections import get_redis
    from k1.history.stream import RECORD_FIELD, STREAM_KEY
    from tests.support import wait_for

    store = ScheduleStore()
    spec = ScheduleSpec(f"builtin-now-{unique}", "k1.tasks.demo.flaky", every=3600,
                        kwargs={"project_id": "ops"}, builtin=True)
    ensure_builtins(store, (spec,))
    try:
        schedule = store.get(spec.name)
        task_id = store.run_now(schedule, user_id=f"root-{unique}")
    finally:
        store.delete(spec.name)

    def submitted() -> list[dict]:
        records = (json.loads(fields[RECORD_FIELD])
                   for _, fields in get_redis().xrevrange(STREAM_KEY, count=500))
        return [r for r in records if r["task_id"] == task_id and r["type"] == "submitted"]

    (record,) = wait_for(submitted, timeout=30, message=f"no submission of {task_id}")
    assert record["task_name"] == "k1.tasks.demo.flaky"
    assert record["user_id"] == f"root-{unique}" and record["project_id"] is None
    assert record["schedule"] == schedule.id
