"""The ``k1`` command. Each area's subcommands live in a module of this package
(``k1/cli/dlq.py``...) and are added to :data:`cli` at the bottom of this file.

Reads the environment like every K1 process; a ``.env`` file in the current directory
(the one ``make run`` writes) fills in only what the environment does not set: an
exported variable always wins, here as in every process ``make run`` starts.
"""

from __future__ import annotations

import shlex
import sys

import click

from k1.settings import DOTENV_SUPPLIED, SettingsError, get_settings, load_dotenv


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
              help="Lifetime in seconds (default 12 h, at most 90 days).")
def token_create(user_id: str, projects: tuple[str, ...], ttl: int | None) -> None:
    """Print a signed token, alone on stdout."""
    from k1.auth import create_token
    from k1.settings import DEFAULT_TOKEN_TTL

    secret = get_settings().secret_key  # a SettingsError is the configuration's, not ours
    try:
        token = create_token(user_id, projects, secret=secret, ttl=ttl or DEFAULT_TOKEN_TTL)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(token)


@token.command("revoke")
@click.argument("token_text", metavar="TOKEN", required=False)
@click.option("--id", "token_id", help="The token's id (jti) instead of the token itself.")
def token_revoke(token_text: str | None, token_id: str | None) -> None:
    """Refuse a token from now on, on the API and on Socket.IO."""
    from k1.auth import InvalidToken, decode_token, revoke

    if (token_text is None) == (token_id is None):
        raise click.UsageError("give the TOKEN or --id JTI (one of them)")
    expires_at = None
    if token_text is not None:
        try:
            principal = decode_token(token_text, secret=get_settings().secret_key,
                                     use=None, verify_exp=False)
        except InvalidToken as exc:
            raise click.UsageError(f"not a token of this platform: {exc}") from None
        token_id, expires_at = principal.token_id, principal.expires_at
    assert token_id is not None
    fresh = revoke(token_id, expires_at)
    click.echo(f"token {token_id} {'revoked' if fresh else 'was revoked already'}")


@token.command("signin-link")
@click.option("--base-url", default="http://127.0.0.1:5000", show_default=True,
              help="The dashboard's address.")
@click.option("--user", "user_id", default="operator", show_default=True,
              help="User the session will name.")
def token_signin_link(base_url: str, user_id: str) -> None:
    """Print a dashboard link that signs the local operator in (once, within minutes)."""
    from k1.auth import SIGNIN_TTL, create_signin_token

    token = create_signin_token(user_id, secret=get_settings().secret_key, ttl=SIGNIN_TTL)
    click.echo(f"{base_url.rstrip('/')}/#signin={token}")


@cli.command("env")
@click.option("--export", "as_exports", is_flag=True,
              help="Print POSIX `export` lines (for `eval` in a shell script).")
def env_command(as_exports: bool) -> None:
    """The variables .env supplies because the environment does not set them.

    ``eval "$(k1 env --export)"`` gives a shell script the same view as every k1 process:
    the environment first, then .env for what it leaves unset (scripts/run.sh uses it).
    """
    prefix = "export " if as_exports else ""
    for name, value in DOTENV_SUPPLIED.items():
        click.echo(f"{prefix}{name}={shlex.quote(value)}")


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


@cli.command("flower", context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> None:
    """Run Celery's Flower on $K1_HOST:$FLOWER_PORT; refuse to without its password.

    Flower shows every task's arguments and can revoke tasks, so it never starts open by
    accident: FLOWER_BASIC_AUTH=user:password is required unless K1_FLOWER_AUTH=off says
    that something in front of it authenticates. Extra arguments go to Flower.
    """
    import os

    from k1.cli.check import Problem, check_flower

    settings = get_settings()
    try:
        click.echo(f"k1 flower: {check_flower(settings)}", err=True)
    except Problem as problem:
        raise click.ClickException(f"refusing to start Flower: {problem.what}; "
                                   f"{problem.fix}") from None
    # exec: Flower becomes this process, so signals from honcho or the dyno reach it.
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "k1.celery", "flower",
                              f"--port={settings.flower_port}", f"--address={settings.host}",
                              *flower_args])


def _add_area_commands() -> None:
    """Each area's group, imported here so ``k1 --help`` lists them all."""
    from k1.cli.check import check

    cli.add_command(check)
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
    from k1.cli.flow import limits, queues
    from k1.cli.history import history_recorder

    cli.add_command(limits)
    cli.add_command(queues)
    cli.add_command(history_recorder)


def main() -> None:
    load_dotenv()
    _add_area_commands()
    try:
        cli(standalone_mode=True)
    except SettingsError as exc:
        click.echo(f"k1: configuration error: {exc}", err=True)
        sys.exit(2)
