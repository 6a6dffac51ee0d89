"""``k1 limits list|set|delete`` and ``k1 queues list|pause|resume`` (k1.flow).

Like the other commands, they run with the platform's own credentials (the environment).
Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
from typing import Any

import click


class FlowCommandError(click.ClickException):
    exit_code = 2


@click.group()
def limits() -> None:
    """Concurrency and rate limits per key, across every worker."""


@limits.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_limits(as_json: bool) -> None:
    """Every limit (declared in code or set at run time) with its use per key."""
    from k1.flow import admin

    rows = admin.overview()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        bounds = ", ".join(part for part in (
            row["concurrency"] and f"{row['concurrency']} at once",
            row["rate"] and f"{row['rate']}") if part)
        click.echo(f"{row['name']} ({row['source']}): {bounds} per {row['per']}; "
                   f"tasks: {', '.join(row['tasks']) or '-'}")
        for use in row["usage"]:
            state = " SATURATED" if use["saturated"] else ""
            click.echo(f"  {use['key'] or '(global)'}: running {use['running']}, "
                       f"next start in {use['next_start_in']}s{state}")


@limits.command("set")
@click.argument("name")
@click.option("--task", "tasks", multiple=True, help="A task it applies to (repeat).")
@click.option("--per", default="global", show_default=True,
              help='"global", "project" or an argument name.')
@click.option("--concurrency", type=int, default=None, help="At most N runs at once.")
@click.option("--rate", default=None, help='"N/s", "N/m" or "N/h".')
@click.option("--lease", type=float, default=None, help="Seconds a slot outlives its holder.")
def set_limit(name: str, tasks: tuple[str, ...], per: str, concurrency: int | None,
              rate: str | None, lease: float | None) -> None:
    """Set limit NAME (replacing one of that name, in code or at run time)."""
    from k1.flow import admin
    from k1.flow.limits import InvalidLimit

    body: dict[str, Any] = {"tasks": list(tasks), "per": per, "concurrency": concurrency,
                            "rate": rate}
    if lease is not None:
        body["lease"] = lease
    try:
        limit = admin.put(name, body)
    except InvalidLimit as exc:
        raise FlowCommandError(str(exc)) from None
    click.echo(f"limit {name} set: {json.dumps({k: limit[k] for k in body})}")


@limits.command("delete")
@click.argument("name")
def delete_limit(name: str) -> None:
    """Delete run-time limit NAME (a limit declared in code applies again)."""
    from k1.flow import admin

    deleted = admin.delete(name)
    if deleted is None:
        raise FlowCommandError(f"no run-time limit named {name!r}")
    back = " (the code's limit applies again)" if deleted["now"] else ""
    click.echo(f"limit {name} deleted{back}")


@click.group()
def queues() -> None:
    """Pause and resume queues across every worker."""


@queues.command("list")
def list_queues() -> None:
    """The paused queues."""
    from k1.flow import queues as paused

    for name in paused.paused_queues():
        click.echo(name)


def _queue_command(verb: str, help_text: str) -> None:
    @queues.command(verb, help=help_text)
    @click.argument("name")
    def command(name: str) -> None:
        from k1.flow import queues as paused

        try:
            state = getattr(paused, verb)(name)
        except paused.InvalidQueue as exc:
            raise FlowCommandError(str(exc)) from None
        click.echo(f"queue {name} {verb}d on {', '.join(state['workers']) or 'no worker'}")


_queue_command("pause", "Stop every worker starting tasks of queue NAME (they stay queued).")
_queue_command("resume", "Let the workers that consumed queue NAME take its tasks again, "
                         "in order.")
