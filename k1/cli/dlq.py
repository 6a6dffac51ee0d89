"""``k1 dlq stats|list|show|replay|purge|quarantine``: the dead-letter queue from a shell.

The CLI runs with the platform's own credentials (the environment), so it sees every
project, and edits a replay's arguments (``replay LETTER_ID --kwargs '{...}'``) as an
operator: the edit is checked like a new submission, as ``POST /api/dlq/<id>/replay``
checks it.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from k1.recovery.dlq.store import DeadLetterStore, Edit

FILTER_OPTIONS = (
    click.option("--task", help="Task name."),
    click.option("--exception", help="Exception type, e.g. TimeoutError."),
    click.option("--project", "project_id", help="Project id."),
    click.option("--since", help="Died at or after (ISO date or date-time, UTC by default)."),
    click.option("--until", help="Died before (ISO date or date-time)."),
    click.option("--status", default=None,
                 help="dead (default), replayed, discarded or all."),
)


def filter_options(command):
    for option in reversed(FILTER_OPTIONS):
        command = option(command)
    return command


def _filters(**params: Any):
    from k1.recovery.dlq.filters import FilterError, LetterFilter

    try:
        return LetterFilter.parse({k: v for k, v in params.items() if v is not None})
    except FilterError as exc:
        raise click.UsageError(str(exc)) from None


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
def dlq() -> None:
    """Dead letters: tasks that failed for good."""


@dlq.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(as_json: bool) -> None:
    """Depth, split by task and exception, oldest letter, daily average depth."""
    from k1.recovery.dlq.store import DeadLetterStore

    store = DeadLetterStore()
    figures = {**store.stats(), "spooled": store.spool_depth(),
               "quarantined": store.quarantine_count()}
    if as_json:
        _print_json(figures)
        return
    click.echo(f"depth            {figures['depth']}")
    click.echo(f"daily avg depth  {figures['daily_avg_depth']}")
    click.echo(f"oldest           {figures['oldest_at'] or '-'}")
    click.echo(f"spooled (Redis)  {figures['spooled']}")
    click.echo(f"quarantined      {figures['quarantined']}")
    for title, key in (("by task", "by_task"), ("by exception", "by_exception")):
        click.echo(f"{title}:")
        for name, count in sorted(figures[key].items(), key=lambda item: -item[1]):
            click.echo(f"  {count:>8}  {name}")


@dlq.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def quarantine(limit: int, as_json: bool) -> None:
    """Letters the database refused even repaired, newest first, with the reason."""
    from k1.recovery.dlq.store import DeadLetterStore

    items = DeadLetterStore().quarantined(limit=limit)
    if as_json:
        _print_json({"items": items})
        return
    for item in items:
        click.echo(f"{item['id']:>8}  {item['quarantined_at']}  {item['task_name']}  "
                   f"[project {item['project_id']}]  {item['reason'].splitlines()[0][:100]}")


@dlq.command("list")
@filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--cursor", help="Cursor of the next page, from a previous list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_letters(limit: int, cursor: str | None, as_json: bool, **params: Any) -> None:
    """Dead letters, newest first."""
    from k1.recovery.dlq.filters import FilterError
    from k1.recovery.dlq.store import DeadLetterStore, letter_as_dict

    try:
        page, next_cursor = DeadLetterStore().query(_filters(**params), limit=limit,
                                                    cursor=cursor)
    except FilterError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        _print_json({"items": [letter_as_dict(r, full=False) for r in page],
                     "next_cursor": next_cursor})
        return
    for letter in page:
        click.echo(f"{letter.id:>8}  {letter.died_at:%Y-%m-%d %H:%M:%S}  {letter.status:<9} "
                   f"{letter.task_name}  {letter.exception_type}: "
                   f"{letter.exception_message[:60]}  [project {letter.project_id}]")
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}")


@dlq.command()
@click.argument("letter_id", type=int)
def show(letter_id: int) -> None:
    """One letter in full, traceback included."""
    from k1.recovery.dlq.store import DeadLetterStore, LetterNotFound, letter_as_dict

    try:
        _print_json(letter_as_dict(DeadLetterStore().get(letter_id)))
    except LetterNotFound:
        raise click.ClickException(f"no dead letter {letter_id}") from None


class JSONArgument(click.ParamType):
    """An option's value as JSON of one kind (a list, an object)."""

    name = "json"  # the metavar: --kwargs JSON

    def __init__(self, kind: type, described: str) -> None:
        self.kind, self.described = kind, described

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value)
        except ValueError as exc:
            self.fail(f"not JSON ({exc}): {value!r}", param, ctx)
        if not isinstance(parsed, self.kind):
            self.fail(f"must be {self.described}, got {value!r}", param, ctx)
        return parsed


@dlq.command()
@click.argument("letter_id", type=int, required=False)
@filter_options
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@click.option("--force", is_flag=True, help="Replay letters already replayed or discarded.")
@click.option("--args", "edited_args", type=JSONArgument(list, "a JSON list"),
              help="Replay LETTER_ID with these positional arguments (JSON list) instead "
                   "of the letter's, checked like a new submission.")
@click.option("--kwargs", "edited_kwargs", type=JSONArgument(dict, "a JSON object"),
              help="Replay LETTER_ID with these keyword arguments (JSON object) instead "
                   "of the letter's, checked like a new submission.")
@click.option("--user", "user_id", default="operator", show_default=True,
              help="Who edits: the user an edited replay is sent as (history's user).")
def replay(letter_id: int | None, everything: bool, force: bool,
           edited_args: list[Any] | None, edited_kwargs: dict[str, Any] | None,
           user_id: str, **params: Any) -> None:
    """Replay one letter (LETTER_ID), with edited --args/--kwargs if given, or every
    letter matching the filters."""
    from k1.recovery.dlq.store import DeadLetterStore

    store = DeadLetterStore()
    edit = _edit(letter_id, edited_args, edited_kwargs, user_id)
    if letter_id is not None:
        _replay_one(store, letter_id, force, edit)
        return
    if not everything and not any(params.values()):
        raise click.UsageError("give LETTER_ID, a filter, or --all")
    filters = _filters(**params)
    if force and params.get("status") is None:
        filters = _filters(**{**params, "status": "all"})
    total = store.count(filters)
    with click.progressbar(length=total, label=f"replaying {total} letters",
                           file=sys.stderr) as bar:
        task_ids = store.replay_matching(filters, force=force, progress=bar.update)
    click.echo(f"replayed {len(task_ids)} letters")


def _edit(letter_id: int | None, args: list[Any] | None, kwargs: dict[str, Any] | None,
          user_id: str) -> Edit | None:
    """The edit the options ask for (None: a plain replay). The CLI holds the platform's
    own credentials, so it edits as an operator would."""
    from k1.recovery.dlq.store import Edit

    if args is None and kwargs is None:
        return None
    if letter_id is None:
        option = "--args" if args is not None else "--kwargs"
        raise click.UsageError(f"{option}: edited arguments replay one letter: give LETTER_ID")
    return Edit(args, kwargs, user_id, operator=True)


def _replay_one(store: DeadLetterStore, letter_id: int, force: bool,
                edit: Edit | None) -> None:
    from k1.recovery.dlq.store import (
        EditInvalid,
        EditNotAllowed,
        LetterNotFound,
        ReplayRefused,
    )

    try:
        letter = store.replay(letter_id, force=force, edit=edit)
    except LetterNotFound:
        raise click.ClickException(f"no dead letter {letter_id}") from None
    except EditInvalid as exc:  # the option at fault, as the API names the field
        raise click.UsageError(f"--{exc.field}: {exc.problem}") from None
    except (ReplayRefused, EditNotAllowed) as exc:
        raise click.ClickException(str(exc)) from None
    edited = f" (edited: {', '.join(edit.fields)})" if edit and edit.fields else ""
    click.echo(f"letter {letter.id} replayed as task {letter.replay_task_id}{edited}")


@dlq.command()
@filter_options
@click.option("--all", "everything", is_flag=True, help="Purge every letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(everything: bool, yes: bool, **params: Any) -> None:
    """Delete matching letters for good (any status unless --status is given)."""
    from k1.recovery.dlq.store import DeadLetterStore

    if not everything and not any(params.values()):
        raise click.UsageError("give a filter, or --all")
    filters = _filters(**{**params, "status": params.get("status") or "all"})
    store = DeadLetterStore()
    total = store.count(filters)
    if not yes:
        click.confirm(f"delete {total} dead letters for good?", abort=True)
    click.echo(f"purged {store.purge(filters)} letters")
