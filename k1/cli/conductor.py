"""``k1 conductor-server`` (a local Conductor server) and ``k1 conductor-worker`` (the
``conductor`` process). Neither imports conductor-python at module level: its task handler
switches multiprocessing to ``spawn`` on import.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from k1.settings import get_settings


@click.command("conductor-server")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Server data (SQLite file, log). Default: $K1_DATA_DIR/conductor.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the jar is kept. Default: $K1_CONDUCTOR_CACHE, else "
                   "$K1_DATA_DIR/cache/conductor (.k1/cache/conductor).")
@click.option("--database-url", envvar="K1_CONDUCTOR_DATABASE_URL", default=None,
              help="postgresql://... for PostgreSQL persistence (default: SQLite). "
                   "Give Conductor its own database. [env K1_CONDUCTOR_DATABASE_URL]")
@click.option("--log-file", type=click.Path(path_type=Path), default=None,
              help="Server log file (default: the console).")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the server to become healthy.")
@click.option("--java", default=None, help="Java 21+ executable (default: searched for).")
@click.option("--fetch-only", is_flag=True, help="Fetch the server jar (mvn), print its path.")
def conductor_server(port: int, host: str, data_dir: Path | None, cache_dir: Path | None,
                     database_url: str | None, log_file: Path | None, timeout: float,
                     java: str | None, fetch_only: bool) -> None:
    """Fetch (once, with mvn) and run the pinned Conductor server.

    Waits until it is healthy, then runs until Ctrl-C / SIGTERM. Needs no K1 secret:
    set-up runs ``k1 conductor-server --fetch-only`` before any .env exists.
    """
    from k1.conductor.server import run_foreground
    from k1.settings import conductor_cache_dir, local_data_dir

    sys.exit(run_foreground(
        cache_dir or conductor_cache_dir(os.environ), port,
        data_dir or local_data_dir(os.environ) / "conductor", database_url, log_file,
        timeout, host=host, java=java, fetch_only=fetch_only))


@click.command("conductor-worker")
@click.option("--task-type", "task_types", multiple=True,
              help="Serve only this task type (repeat). Default: every SIMPLE task of the "
                   "workflow files.")
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True,
              help="Hand-offs in flight at once.")
@click.option("--poll-interval", type=click.IntRange(min=10), default=100, show_default=True,
              help="Milliseconds between polls of an idle task type.")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register the workflow files first (idempotent; waits for the server).")
def conductor_worker(task_types: tuple[str, ...], threads: int, poll_interval: int,
                     register: bool) -> None:
    """Run the Conductor workers that hand K1 tasks to Celery (Procfile ``conductor``)."""
    from k1.conductor.registry import ValidationFailed, load_directory, validate

    try:
        files = validate(load_directory(get_settings().workflows_dir))
    except ValidationFailed as exc:
        raise click.ClickException(f"invalid workflow files:\n{exc}") from None
    if not task_types:
        task_types = tuple(sorted({n for f in files for n in f.simple_task_names()}))
    if register:
        _register_when_ready(files)
    from k1.conductor.worker import serve  # imports conductor-python: this process only

    sys.exit(serve(task_types, poll_interval_ms=poll_interval, threads=threads))


REGISTER_WAIT = 180.0  # s: a local server started alongside takes ~10-20 s to be healthy


def _register_when_ready(files: list) -> None:
    """Register the workflow files once the server answers; a refusal (a changed
    definition without a new version) is reported and the worker serves anyway.
    """
    import time

    from k1.conductor.client import ConductorClient, ConductorError
    from k1.conductor.registry import VersionConflict, register

    try:
        client = ConductorClient()
    except ConductorError as exc:
        raise click.ClickException(str(exc)) from None
    deadline = time.monotonic() + REGISTER_WAIT
    while not client.healthy():
        if time.monotonic() > deadline:
            click.echo(f"k1 conductor-worker: Conductor not healthy after {REGISTER_WAIT:.0f}"
                       " s; workflows not registered", err=True)
            return
        time.sleep(1)
    try:
        for outcome in register(client, files):
            click.echo(f"k1 conductor-worker: workflow {outcome}", err=True)
    except (VersionConflict, ConductorError) as exc:
        click.echo(f"k1 conductor-worker: workflows not registered: {exc}", err=True)
