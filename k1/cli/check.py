"""``k1 check``: the effective configuration, then every dependency, first problem first.

    $ k1 check
    configuration (source: environment, .env or default; secrets masked)
      REDIS_URL              rediss://:***@redis.example.com:6380/0?ssl_cert_reqs=none  environment
      ...
    ok    secret: K1_SECRET_KEY holds about 384 bits
    FAIL  redis: ... CERTIFICATE_VERIFY_FAILED ...
          fix: set K1_REDIS_SSL_CERT_REQS=none (...)

Exits 0 when everything is ready, 1 naming the first problem and its fix (the release
phase may run it), 2 when the configuration itself is malformed.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import click

from k1.settings import (
    DOTENV_SUPPLIED,
    SECRET_VARIABLES,
    VARIABLES,
    Settings,
    get_settings,
    redact,
)

MIN_REDIS_VERSION = (6, 2)  # kombu 5.7's Redis transport sends ZRANGE ... BYSCORE REV
# A key this many bits of guessing deep resists brute force of its HS256 signatures.
MIN_SECRET_KEY_BITS = 128
MIN_FLOWER_PASSWORD = 12  # characters; `make run` generates 16
SOURCE_ENVIRONMENT, SOURCE_DOTENV, SOURCE_DEFAULT = "environment", ".env", "default"


class Problem(Exception):
    """A dependency is not ready: what is wrong, and what fixes it."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


@dataclass(frozen=True)
class Entry:
    name: str
    value: str
    source: str


def effective_configuration(settings: Settings, environ: Mapping[str, str],
                            from_dotenv: Mapping[str, str]) -> list[Entry]:
    """Each variable K1 reads, its effective value (secrets masked) and where it came from."""
    entries = []
    for name, field in VARIABLES.items():
        if name in from_dotenv:
            source = SOURCE_DOTENV
        elif environ.get(name, "").strip():
            source = SOURCE_ENVIRONMENT
        else:
            source = SOURCE_DEFAULT
        value = getattr(settings, field) if field else environ.get(name) or None
        entries.append(Entry(name, _show(name, value), source))
    return entries


def _show(name: str, value: object) -> str:
    if value is None or value == ():
        return "(unset)"
    if isinstance(value, tuple):
        value = ",".join(value)
    text = str(value)
    if name in SECRET_VARIABLES:
        # user names stay readable; passwords and keys never appear
        users = [pair.partition(":")[0] for pair in text.split(",")] if ":" in text else []
        return f"{','.join(f'{user}:***' for user in users)}" if users else (
            f"*** ({len(text)} characters)")
    return redact(text) if "://" in text else text


# --------------------------------------------------------------------------- checks


def check_secret(settings: Settings) -> str:
    bits = secret_bits(settings.secret_key)
    if bits < MIN_SECRET_KEY_BITS:
        raise Problem(f"K1_SECRET_KEY is guessable (about {bits} bits; it signs every token)",
                      "set K1_SECRET_KEY to `python -c 'import secrets; "
                      "print(secrets.token_urlsafe(48))'`, then issue new tokens")
    return f"K1_SECRET_KEY holds about {bits} bits"


def secret_bits(key: str) -> int:
    """A rough upper bound of a key's entropy: its length times the Shannon entropy of its
    characters, so that repeated patterns ("changeme" x 5) count for little."""
    counts = Counter(key)
    per_char = -sum(n / len(key) * math.log2(n / len(key)) for n in counts.values())
    return int(len(key) * per_char)


def check_flower(settings: Settings) -> str:
    if settings.flower_auth == "off":
        return "Flower authentication is off (K1_FLOWER_AUTH=off): keep it off the internet"
    auth = settings.flower_basic_auth
    pairs = [pair.partition(":") for pair in (auth or "").split(",")]
    if not auth or any(not user or len(password) < MIN_FLOWER_PASSWORD
                       for user, _, password in pairs):
        raise Problem("FLOWER_BASIC_AUTH is not set as user:password (a password of "
                      f"{MIN_FLOWER_PASSWORD}+ characters); Flower would show "
                      "every task's arguments to anyone who reaches its port",
                      "set FLOWER_BASIC_AUTH=admin:<a long random password> (or "
                      "K1_FLOWER_AUTH=off when a proxy in front of Flower authenticates)")
    return f"Flower asks for a password ({len(pairs)} user(s))"


def check_redis(settings: Settings) -> str:
    from k1.health import check_redis as probe

    info = probe(settings.redis_url, detail=True)
    if info["status"] != "up":
        raise Problem(f"Redis at {redact(settings.redis_url)} does not answer: "
                      f"{info['error']}", info["fix"])
    version = info["version"]
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_REDIS_VERSION:
        raise Problem(f"Redis {version} is too old; K1 needs "
                      f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer",
                      "upgrade Redis (Debian 12 ships 7.0)")
    return f"Redis {version} at {redact(settings.redis_url)}"


def check_database(settings: Settings) -> str:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from k1.db import make_engine
    from k1.db.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except Exception as exc:  # any failure to connect is the problem to report
        raise Problem(f"the database at {redact(settings.database_url)} does not answer: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                      "check DATABASE_URL and that PostgreSQL runs") from None
    finally:
        engine.dispose()
    if current != head:
        raise Problem(f"the database is at revision {current or '(empty)'}, the code needs "
                      f"{head}", "run `k1 db upgrade` (the Procfile's release phase)")
    return f"database migrated to {head}"


def check_conductor(settings: Settings) -> str:
    if not settings.conductor_server_url:
        return "Conductor not configured (CONDUCTOR_SERVER_URL unset): workflows are off"
    from k1.conductor.client import ConductorClient, ConductorError
    from k1.conductor.registry import (
        ValidationFailed,
        VersionConflict,
        check_versions,
        load_directory,
        validate,
    )

    client = ConductorClient(settings.conductor_server_url)
    if not client.healthy():
        raise Problem(f"Conductor at {settings.conductor_server_url} does not answer",
                      "start the Conductor server or fix CONDUCTOR_SERVER_URL")
    try:
        files = validate(load_directory(settings.workflows_dir))
        states = check_versions(client, files)
    except ValidationFailed as exc:
        raise Problem(f"workflow files are invalid: {exc}",
                      "run `k1 workflows validate` and fix the files") from None
    except VersionConflict as exc:
        raise Problem(str(exc), "bump the workflow's version, then "
                      "`k1 workflows register`") from None
    except ConductorError as exc:
        raise Problem(f"Conductor answered: {exc}",
                      "check the Conductor server's logs") from None
    missing = sorted(f"{wf.name} v{wf.version}" for wf in files if states[wf.name] == "new")
    if missing:
        raise Problem(f"workflows not registered in Conductor: {', '.join(missing)}",
                      "run `k1 workflows register`")
    return f"Conductor answers; {len(files)} workflow(s) registered at their versions"


CHECKS: list[tuple[str, Callable[[Settings], str]]] = [
    ("secret", check_secret), ("flower", check_flower), ("redis", check_redis),
    ("database", check_database), ("conductor", check_conductor),
]


@click.command("check")
def check() -> None:
    """Print the effective configuration, then check every dependency.

    Exits 1 naming the first problem and its fix.
    """
    settings = get_settings()
    click.echo("configuration (source: environment, .env or default; secrets masked)")
    entries = effective_configuration(settings, os.environ, DOTENV_SUPPLIED)
    width = max(len(entry.name) for entry in entries)
    for entry in entries:
        click.echo(f"  {entry.name:<{width}}  {entry.value}  [{entry.source}]")
    click.echo()
    for name, run in CHECKS:
        try:
            detail = run(settings)
        except Problem as problem:
            click.echo(f"FAIL  {name}: {problem.what}\n      fix: {problem.fix}")
            raise SystemExit(1) from None
        click.echo(f"ok    {name}: {detail}")
