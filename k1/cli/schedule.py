"""``k1 schedule list|add|rm|pause|resume|run`` and ``k1 beat``.

The CLI runs with the platform's own credentials (the environment), so it reaches every
schedule, built-ins included. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click


class ScheduleCommandError(click.ClickException):
    exit_code = 2


@contextmanager
def _errors() -> Iterator[None]:
    """The store's exceptions as one-line CLI errors."""
    from k1.scheduling import (
        AmbiguousSchedule,
        InvalidSchedule,
        ScheduleConflict,
        ScheduleExists,
        ScheduleNotFound,
    )
    from k1.tasks.submissions import SubmissionError

    try:
        yield
    except (AmbiguousSchedule, InvalidSchedule, ScheduleConflict, ScheduleExists,
            ScheduleNotFound, SubmissionError) as exc:
        raise ScheduleCommandError(str(exc)) from None


def _json_option(value: str | None, field: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ScheduleCommandError(f"{field}: not valid JSON: {exc}") from None


@click.group()
def schedule() -> None:
    """Schedules run by beat (RedBeat): cron or interval, per time zone."""


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_schedules(as_json: bool) -> None:
    """Every schedule, with its next run and last status."""
    from k1.scheduling import ScheduleStore

    schedules = [s.to_json() for s in ScheduleStore().list()]
    if as_json:
        click.echo(json.dumps(schedules, indent=2))
        return
    rows = [("NAME", "STATE", "TIMING", "NEXT RUN", "LAST STATUS", "TASK", "PROJECT")]
    for s in schedules:
        timing = s["cron"] if s["cron"] else f"every {s['every']}s"
        rows.append((s["name"], s["state"], f"{timing} ({s['timezone']})",
                     "ERROR (see --json)" if "error" in s else s["next_run_at"] or "-",
                     s["last_status"] or "-", s["task"],
                     s["project_id"] or "-"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths,
                                                                          strict=True)).rstrip())


@schedule.command("add")
@click.argument("name")
@click.option("--task", required=True, help="Registered task name.")
@click.option("--cron", help="5-field cron expression, e.g. '0 2 * * *'.")
@click.option("--every", type=float, help="Interval in seconds.")
@click.option("--args", "args_json", help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", help="Keyword arguments, a JSON object.")
@click.option("--timezone", default=None, help="IANA time zone of the cron expression [UTC].")
@click.option("--project", "project_id", help="Project the task runs for.")
@click.option("--catch-up", type=click.Choice(["once", "skip"]), default=None,
              help="After beat downtime: fire once, or skip what was missed [once].")
@click.option("--paused", is_flag=True, help="Create it paused.")
def add(name: str, task: str, cron: str | None, every: float | None, args_json: str | None,
        kwargs_json: str | None, timezone: str | None, project_id: str | None,
        catch_up: str | None, paused: bool) -> None:
    """Create schedule NAME."""
    from k1.scheduling import ScheduleStore

    body = {"name": name, "task": task, "cron": cron, "every": every,
            "args": _json_option(args_json, "args"), "kwargs": _json_option(kwargs_json, "kwargs"),
            "timezone": timezone, "project_id": project_id, "catch_up": catch_up,
            "enabled": not paused}
    store = ScheduleStore()
    with _errors():
        created = store.create(store.validate({k: v for k, v in body.items() if v is not None}))
    assert created is not None
    click.echo(f"{name}: {created.to_json()['description']}; next run "
               f"{created.to_json()['next_run_at'] or '- (paused)'}")


# Names are scoped per project: --project picks one where several projects use a name.
_project = click.option("--project", "project_id", default=None,
                        help="The schedule's project, where several projects use NAME.")


@schedule.command("rm")
@click.argument("name")
@_project
def remove(name: str, project_id: str | None) -> None:
    """Delete schedule NAME."""
    from k1.scheduling import ScheduleStore

    with _errors():
        ScheduleStore().delete(name, project_id)
    click.echo(f"{name}: deleted")


@schedule.command("pause")
@click.argument("name")
@_project
def pause(name: str, project_id: str | None) -> None:
    """Stop NAME firing until resumed."""
    from k1.scheduling import ScheduleStore

    with _errors():
        ScheduleStore().pause(name, project_id)
    click.echo(f"{name}: paused")


@schedule.command("resume")
@click.argument("name")
@_project
def resume(name: str, project_id: str | None) -> None:
    """Fire NAME again, from its next fire time after now."""
    from k1.scheduling import ScheduleStore

    with _errors():
        resumed = ScheduleStore().resume(name, project_id)
    click.echo(f"{name}: active; next run {resumed.to_json()['next_run_at']}")


@schedule.command("run")
@click.argument("name")
@_project
def run(name: str, project_id: str | None) -> None:
    """Send NAME's task now; prints the task id."""
    from k1.scheduling import ScheduleStore

    store = ScheduleStore()
    with _errors():
        click.echo(store.run_now(store.get(name, project_id)))


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run celery beat (RedBeat), restarting it whenever it exits (Procfile ``beat``)."""
    from k1.scheduling.supervisor import beat_argv, supervise
    from k1.settings import get_settings

    sys.exit(supervise(beat_argv(celery_args, get_settings().log_level)))
