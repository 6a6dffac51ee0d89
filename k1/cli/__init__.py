"""The ``k1`` command. Each area's subcommands live in a module of this package
(``k1/cli/dlq.py``...) and are added to :data:`cli` at the bottom of this file.

Reads the environment like every K1 process; a ``.env`` file in the current directory
(the one ``make run`` writes, which honcho also reads) fills in what the environment
does not set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from honcho.environ import parse as parse_dotenv

from k1.settings import SettingsError, get_settings


def load_dotenv(path: Path = Path(".env")) -> None:
    """Fill ``os.environ`` from ``path`` without overriding what is already set."""
    if path.is_file():
        for name, value in parse_dotenv(path.read_text()).items():
            os.environ.setdefault(name, value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """K1 task platform."""


@cli.group()
def token() -> None:
    """API and Socket.IO bearer tokens."""


@token.command("create")
@click.option("--user", "user_id", required=True, help="User the token names.")
@click.option("--project", "projects", multiple=True, required=True,
              help="Project the token may reach (repeat; '*' for every project).")
@click.option("--ttl", type=click.IntRange(min=1), default=None,
              help="Lifetime in seconds (default 12 h).")
def token_create(user_id: str, projects: tuple[str, ...], ttl: int | None) -> None:
    """Print a signed token, alone on stdout."""
    from k1.auth import create_token
    from k1.settings import DEFAULT_TOKEN_TTL

    click.echo(create_token(user_id, projects, secret=get_settings().secret_key,
                            ttl=ttl or DEFAULT_TOKEN_TTL))


@cli.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations (Procfile ``release``)."""
    from k1.db.migrate import upgrade

    upgrade(revision)
    click.echo(f"database at {revision}")


@cli.command("external-service")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
def external_service(host: str, port: int) -> None:
    """Run the stand-in external HTTP service (tests and demo)."""
    from k1.external_service import serve

    serve(host, port)


def _add_area_commands() -> None:
    """Each area's group, imported here so ``k1 --help`` lists them all."""
    from k1.cli.dlq import dlq
    from k1.cli.schedule import beat, schedule

    cli.add_command(dlq)
    cli.add_command(schedule)
    cli.add_command(beat)
    from k1.cli.conductor import conductor_server, conductor_worker
    from k1.cli.workflows import workflows

    cli.add_command(conductor_server)
    cli.add_command(conductor_worker)
    cli.add_command(workflows)
    from k1.cli.history import history_recorder

    cli.add_command(history_recorder)


def main() -> None:
    load_dotenv()
    _add_area_commands()
    try:
        cli(standalone_mode=True)
    except SettingsError as exc:
        click.echo(f"k1: configuration error: {exc}", err=True)
        sys.exit(2)
