"""``k1 workflows validate|register|list|start``: the definitions in workflows/*.json."""

from __future__ import annotations

import json
from pathlib import Path

import click

from k1.settings import get_settings


def _files(paths: tuple[Path, ...], directory: Path | None):
    from k1.conductor.registry import ValidationFailed, load_directory, load_files, validate

    try:
        loaded = load_files(paths) if paths else load_directory(
            directory or get_settings().workflows_dir)
        return validate(loaded)
    except ValidationFailed as exc:
        for problem in exc.problems:
            click.echo(f"invalid: {problem}", err=True)
        raise click.ClickException(f"{len(exc.problems)} problem(s); nothing was sent to "
                                   "Conductor") from None


def _client():
    from k1.conductor.client import ConductorClient, ConductorNotConfigured

    try:
        return ConductorClient()
    except ConductorNotConfigured as exc:
        raise click.ClickException(str(exc)) from None


_paths = click.argument("paths", nargs=-1, type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path))
_dir = click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
                    default=None, help="Workflow directory (default: $K1_WORKFLOWS_DIR).")


@click.group()
def workflows() -> None:
    """Conductor workflow definitions (workflows/*.json) and executions."""


@workflows.command("validate")
@_paths
@_dir
def validate_cmd(paths: tuple[Path, ...], directory: Path | None) -> None:
    """Check the files (JSON, required fields, references, K1 task types, the "k1"
    options such as operator_only) offline."""
    for wf in _files(paths, directory):
        scope = ", operator only" if wf.operator_only else ""
        click.echo(f"ok: {wf.path} ({wf.name} v{wf.version}{scope}, tasks: "
                   f"{', '.join(wf.simple_task_names())})")


@workflows.command("register")
@_paths
@_dir
def register_cmd(paths: tuple[Path, ...], directory: Path | None) -> None:
    """Validate, then create each workflow version the server lacks (idempotent).

    A registered version whose content differs from its file is refused: bump its version.
    """
    from k1.conductor.client import ConductorError
    from k1.conductor.registry import VersionConflict, register

    files = _files(paths, directory)
    try:
        for outcome in register(_client(), files):
            click.echo(str(outcome))
    except VersionConflict as exc:
        raise click.ClickException(f"refused, nothing registered:\n{exc}") from None
    except ConductorError as exc:
        raise click.ClickException(str(exc)) from None


@workflows.command("list")
@click.option("--executions", "limit", type=click.IntRange(min=0), default=10,
              show_default=True, help="How many recent executions to show.")
def list_cmd(limit: int) -> None:
    """Registered definitions (name, versions) and recent executions."""
    from k1.conductor.client import ConductorError
    from k1.conductor.executions import recent

    client = _client()
    try:
        definitions = client.list_workflow_defs()
    except ConductorError as exc:
        raise click.ClickException(str(exc)) from None
    versions: dict[str, list[int]] = {}
    for definition in definitions:
        versions.setdefault(definition["name"], []).append(int(definition["version"]))
    for name in sorted(versions):
        click.echo(f"{name}\tversions {', '.join(map(str, sorted(versions[name])))}")
    if limit:
        for e in recent(limit, client=client):
            click.echo(f"{e['workflow_id']}\t{e['name']} v{e['version']}\t{e['status']}\t"
                       f"project {e['project_id']}")


@workflows.command("start")
@click.argument("name")
@click.option("--project", "project_id", required=True, help="Project the run is for.")
@click.option("--input", "input_json", default="{}", help="Workflow input, a JSON object.")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Version to run (default: the latest).")
def start_cmd(name: str, project_id: str, input_json: str, version: int | None) -> None:
    """Start a workflow; prints its workflow id."""
    from k1.conductor.client import ConductorError
    from k1.conductor.executions import start

    try:
        workflow_input = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from None
    if not isinstance(workflow_input, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--input")
    try:
        click.echo(start(name, workflow_input, version=version, project_id=project_id,
                         client=_client()))
    except ConductorError as exc:
        raise click.ClickException(str(exc)) from None
