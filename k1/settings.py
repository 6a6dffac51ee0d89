"""K1 settings: the environment, read once, checked, typed.

Heroku-style names are the contract (``REDIS_URL``, ``DATABASE_URL``, ``PORT``...).
A malformed value stops start-up with a :class:`SettingsError` naming the variable::

    from k1.settings import get_settings
    settings = get_settings()          # cached; reads os.environ
    settings.database_url              # 'postgresql+psycopg://...' even for postgres:// input

Tests and tools build their own with ``Settings.from_env({...})``.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATA_DIR = ".k1"  # local state (SQLite file, Redis data, Conductor jar), gitignored
DEFAULT_PORT = 5000
DEFAULT_FLOWER_PORT = 5555
DEFAULT_EXTERNAL_SERVICE_URL = "http://127.0.0.1:8090"
# workflows/*.json beside the package (the repository root; Heroku runs from it too).
DEFAULT_WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
# The longest K1 task runs well under an hour; with acks_late a task that is still
# unacknowledged after this long is delivered again, so retry countdowns and breaker
# deferrals are kept below it (see k1.recovery.policy).
DEFAULT_VISIBILITY_TIMEOUT = 3600  # 1 h
# Task history: a million tasks answer a search within its 100 ms goal (bench/history.py)
# and take a few GB of PostgreSQL with their attempts and records.
DEFAULT_HISTORY_MAX_ROWS = 1_000_000
DEFAULT_TOKEN_TTL = 12 * 3600  # 12 h: a working day, then sign in again
# Beat sleeps at most this long between looks at the schedule, so a schedule changed
# through the API takes effect within it; each look costs a few Redis round trips.
DEFAULT_BEAT_MAX_LOOP_INTERVAL = 1  # s
# The active beat's lock lives this long unless renewed (every loop). A standby beat
# takes over at most this long after the active one dies; an active beat stalled for
# longer loses the lock and exits (k1 beat restarts it). See docs/scheduling.md.
DEFAULT_BEAT_LOCK_TIMEOUT = 10  # s
# A worker sent SIGTERM lets running tasks finish for this long, then hands the rest back
# to the queue; it stays well inside Heroku's 30 s between SIGTERM and SIGKILL.
DEFAULT_WORKER_SHUTDOWN_GRACE = 20  # s
MIN_BEAT_LOCK_LOOPS = 3  # the lock must outlive several loops, or a busy beat loses it
MIN_SECRET_KEY_LENGTH = 32  # HS256 wants at least 256 bits of key
ASYNC_MODES = ("eventlet", "gevent", "threading")
DOTENV_PATH = Path(".env")  # local secrets written by `make run`; gitignored
# A client that scripts against the API sends bursts of a few dozen; a tenant that sends
# more than this per second per user is flooding the shared broker.
DEFAULT_API_WRITE_LIMIT = "50/second;1500/minute"
FLOWER_AUTH_MODES = ("required", "off")  # off: an explicit opt-out, e.g. behind a proxy
# The queues whose messages take turns between projects (k1.broker): the users' queue, so
# that one project's backlog does not delay the others' tasks. K1's own queue needs none:
# its tasks belong to no project. Set K1_FAIR_QUEUES= (empty) for none.
DEFAULT_FAIR_QUEUES = ("celery",)
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")  # what a queue may be called in K1

# Every variable K1 reads -> the Settings field it sets (None: read by a Procfile line or
# folded into another field). `k1 check` prints them with their source.
VARIABLES: dict[str, str | None] = {
    "REDIS_URL": "redis_url", "K1_REDIS_SSL_CERT_REQS": None, "DATABASE_URL": "database_url",
    "K1_SECRET_KEY": "secret_key", "CONDUCTOR_SERVER_URL": "conductor_server_url",
    "K1_CORS_ORIGINS": "cors_origins", "K1_HOST": "host", "PORT": "port",
    "FLOWER_PORT": "flower_port", "FLOWER_BASIC_AUTH": "flower_basic_auth",
    "K1_FLOWER_AUTH": "flower_auth", "K1_EXTERNAL_SERVICE_URL": "external_service_url",
    "K1_VISIBILITY_TIMEOUT": "visibility_timeout", "K1_ASYNC_MODE": "async_mode",
    "K1_DATA_DIR": "data_dir", "K1_LOG_LEVEL": "log_level",
    "K1_DLQ_RETENTION_DAYS": "dlq_retention_days", "K1_DLQ_MAX_ROWS": "dlq_max_rows",
    "K1_HISTORY_RETENTION_DAYS": "history_retention_days",
    "K1_HISTORY_MAX_ROWS": "history_max_rows",
    "K1_BREAKER_FAIL_MAX": "breaker_fail_max",
    "K1_BREAKER_RESET_TIMEOUT": "breaker_reset_timeout", "K1_WORKFLOWS_DIR": "workflows_dir",
    "K1_CONDUCTOR_CACHE": "conductor_cache_dir", "K1_TASK_EVENTS": "task_events",
    "K1_BEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "K1_BEAT_LOCK_TIMEOUT": "beat_lock_timeout", "K1_WORKER_CONCURRENCY": None,
    "K1_WORKER_SHUTDOWN_GRACE": "worker_shutdown_grace",
    "K1_API_WRITE_LIMIT": "api_write_limit", "K1_FAIR_QUEUES": "fair_queues",
}
SECRET_VARIABLES = frozenset({"K1_SECRET_KEY", "FLOWER_BASIC_AUTH"})
REDIS_SSL_CERT_REQS = ("required", "optional", "none")


# Redis connection errors a setting fixes: a marker in the error's text -> the fix. Read by
# `k1 check`, /api/health and every process's log handler (k1.logs), so a worker retrying
# forever on a self-signed certificate says which variable ends it.
REDIS_ERROR_FIXES = (
    ("CERTIFICATE_VERIFY_FAILED", "Redis' TLS certificate is not trusted (managed Redis "
     "such as Heroku's presents a self-signed one): set K1_REDIS_SSL_CERT_REQS=none"),
    ("WRONGPASS", "put Redis' password in REDIS_URL: redis://:PASSWORD@host:port/0"),
    ("NOAUTH", "put Redis' password in REDIS_URL: redis://:PASSWORD@host:port/0"),
    ("WRONG_VERSION_NUMBER", "Redis does not speak TLS on that port: use redis://, "
     "not rediss://"),
)


def redis_error_fix(message: str) -> str | None:
    """The setting that fixes a Redis error with this message, if a setting can."""
    return next((fix for marker, fix in REDIS_ERROR_FIXES if marker in message), None)


def local_data_dir(env: Mapping[str, str]) -> Path:
    """``$K1_DATA_DIR`` (default ``.k1``): readable without the rest of the settings."""
    return Path(env.get("K1_DATA_DIR", DEFAULT_DATA_DIR))


def conductor_cache_dir(env: Mapping[str, str]) -> Path:
    """The one jar cache of ``k1 conductor-server``, tests and benchmarks:
    ``$K1_CONDUCTOR_CACHE``, default ``$K1_DATA_DIR/cache/conductor``. Readable without a
    secret key, so that set-up can fetch the jar before any ``.env`` exists.
    """
    return Path(env.get("K1_CONDUCTOR_CACHE") or local_data_dir(env) / "cache" / "conductor")


class SettingsError(ValueError):
    """A variable of the environment is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    redis_url: str
    database_url: str
    secret_key: str
    conductor_server_url: str | None
    cors_origins: tuple[str, ...]
    host: str
    port: int
    flower_port: int
    flower_basic_auth: str | None  # user:password[,user:password...] for Flower
    flower_auth: str  # "required" or "off" (K1_FLOWER_AUTH, an explicit opt-out)
    external_service_url: str
    visibility_timeout: int
    async_mode: str
    data_dir: Path
    log_level: str
    dlq_retention_days: int
    dlq_max_rows: int
    history_retention_days: int  # task history kept this long (k1.history.enforce_retention)
    history_max_rows: int  # and at most this many tasks, oldest dropped first
    breaker_fail_max: int  # default for every breaker; pybreaker's fail_max
    breaker_reset_timeout: int  # seconds open before a trial call
    workflows_dir: Path  # the workflow definition files (k1.conductor.registry)
    conductor_cache_dir: Path  # where `k1 conductor-server` keeps the server jar
    task_events: bool  # K1_TASK_EVENTS=off leaves the task signal handlers unconnected (bench)
    beat_max_loop_interval: int
    beat_lock_timeout: int
    worker_shutdown_grace: int  # s running tasks get to finish after SIGTERM
    api_write_limit: str  # API writes per user, limits notation (k1.web.security)
    fair_queues: tuple[str, ...]  # queues shared fairly between projects (k1.broker)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); raise SettingsError."""
        env = os.environ if env is None else env
        data_dir = local_data_dir(env)
        return cls(
            redis_url=_redis_url(env),
            database_url=_database_url(env, data_dir),
            secret_key=_secret_key(env),
            conductor_server_url=_optional_http_url(env, "CONDUCTOR_SERVER_URL"),
            cors_origins=_origins(env, "K1_CORS_ORIGINS"),
            host=env.get("K1_HOST", "0.0.0.0"),
            port=_int(env, "PORT", DEFAULT_PORT, low=1, high=65535),
            flower_port=_int(env, "FLOWER_PORT", DEFAULT_FLOWER_PORT, low=1, high=65535),
            flower_basic_auth=env.get("FLOWER_BASIC_AUTH", "").strip() or None,
            flower_auth=_choice(env, "K1_FLOWER_AUTH", FLOWER_AUTH_MODES, "required"),
            external_service_url=_optional_http_url(env, "K1_EXTERNAL_SERVICE_URL")
            or DEFAULT_EXTERNAL_SERVICE_URL,
            visibility_timeout=_int(
                env, "K1_VISIBILITY_TIMEOUT", DEFAULT_VISIBILITY_TIMEOUT, low=60
            ),
            async_mode=_choice(env, "K1_ASYNC_MODE", ASYNC_MODES, "eventlet"),
            data_dir=data_dir,
            log_level=_choice(
                env, "K1_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", upper=True
            ),
            dlq_retention_days=_int(env, "K1_DLQ_RETENTION_DAYS", 30, low=1),
            dlq_max_rows=_int(env, "K1_DLQ_MAX_ROWS", 100_000, low=1),
            history_retention_days=_int(env, "K1_HISTORY_RETENTION_DAYS", 30, low=1),
            history_max_rows=_int(env, "K1_HISTORY_MAX_ROWS", DEFAULT_HISTORY_MAX_ROWS, low=1),
            breaker_fail_max=_int(env, "K1_BREAKER_FAIL_MAX", 5, low=1),
            breaker_reset_timeout=_int(env, "K1_BREAKER_RESET_TIMEOUT", 60, low=1),
            workflows_dir=Path(env.get("K1_WORKFLOWS_DIR") or DEFAULT_WORKFLOWS_DIR),
            conductor_cache_dir=conductor_cache_dir(env),
            task_events=_choice(env, "K1_TASK_EVENTS", ("on", "off"), "on") == "on",
            worker_shutdown_grace=_int(env, "K1_WORKER_SHUTDOWN_GRACE",
                                       DEFAULT_WORKER_SHUTDOWN_GRACE, low=0, high=3600),
            api_write_limit=_rate_limits(env, "K1_API_WRITE_LIMIT", DEFAULT_API_WRITE_LIMIT),
            fair_queues=_queue_names(env, "K1_FAIR_QUEUES", DEFAULT_FAIR_QUEUES),
            **_beat_timing(env),
        )


def _rate_limits(env: Mapping[str, str], name: str, default: str) -> str:
    from limits import parse_many

    value = env.get(name, "").strip() or default
    try:
        parse_many(value)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc} (e.g. '20/second;600/minute')") from None
    return value


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from ``os.environ`` on first use."""
    return Settings.from_env()


def generate_secret_key() -> str:
    """A fresh random key suitable for ``K1_SECRET_KEY``."""
    return secrets.token_urlsafe(48)


def read_dotenv(path: Path = DOTENV_PATH) -> dict[str, str]:
    """The ``NAME=value`` pairs of a .env file (honcho's parser, as ``make run`` used)."""
    from honcho.environ import parse

    return parse(path.read_text()) if path.is_file() else {}


# The names .env supplied to this process (the environment did not set them): `k1 check`
# and `k1 env` say where each value came from.
DOTENV_SUPPLIED: dict[str, str] = {}


def load_dotenv(
    path: Path = DOTENV_PATH, environ: MutableMapping[str, str] | None = None,
) -> dict[str, str]:
    """Fill ``environ`` (default ``os.environ``, recorded in :data:`DOTENV_SUPPLIED`) from
    ``path`` where it sets nothing.

    The environment always wins: an exported variable is never replaced by the file.
    Returns what the file supplied, so tools can say where each value came from.
    """
    into_process = environ is None
    environ = os.environ if environ is None else environ
    supplied = {name: value for name, value in read_dotenv(path).items()
                if name not in environ}
    environ.update(supplied)
    if into_process:
        DOTENV_SUPPLIED.update(supplied)
    return supplied


def _beat_timing(env: Mapping[str, str]) -> dict[str, int]:
    loop = _int(env, "K1_BEAT_MAX_LOOP_INTERVAL", DEFAULT_BEAT_MAX_LOOP_INTERVAL, low=1, high=60)
    lock = _int(env, "K1_BEAT_LOCK_TIMEOUT", max(DEFAULT_BEAT_LOCK_TIMEOUT,
                                                   MIN_BEAT_LOCK_LOOPS * loop), low=1)
    if lock < MIN_BEAT_LOCK_LOOPS * loop:
        raise SettingsError(
            f"K1_BEAT_LOCK_TIMEOUT: must be at least {MIN_BEAT_LOCK_LOOPS} x "
            f"K1_BEAT_MAX_LOOP_INTERVAL ({MIN_BEAT_LOCK_LOOPS * loop}), got {lock}"
        )
    return {"beat_max_loop_interval": loop, "beat_lock_timeout": lock}


def _redis_url(env: Mapping[str, str]) -> str:
    raw = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    parts = urlsplit(raw)
    if parts.scheme == "unix":
        # redis-py reads unix://, but Celery's broker (kombu) knows no such transport and
        # RedBeat no other: one URL cannot name a socket for all of them.
        raise SettingsError(
            f"REDIS_URL: unix:// sockets are not supported (Celery's broker has no such "
            f"transport); give Redis a TCP address, redis://host:port/db, got {redact(raw)!r}"
        )
    if parts.scheme not in ("redis", "rediss"):
        raise SettingsError(
            f"REDIS_URL: scheme must be redis:// or rediss://, got {redact(raw)!r}"
        )
    _check_host_port("REDIS_URL", raw)
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise SettingsError(f"REDIS_URL: database must be a number, got {db!r}")
    if parts.scheme == "rediss":
        # Celery and redis-py refuse rediss:// without a certificate policy. Heroku
        # Redis presents a self-signed certificate and needs K1_REDIS_SSL_CERT_REQS=none.
        query = dict(parse_qsl(parts.query))
        if "ssl_cert_reqs" not in query:
            query["ssl_cert_reqs"] = _choice(
                env, "K1_REDIS_SSL_CERT_REQS", REDIS_SSL_CERT_REQS, "required"
            )
        raw = urlunsplit(parts._replace(query=urlencode(query)))
    return raw


def _database_url(env: Mapping[str, str], data_dir: Path) -> str:
    raw = env.get("DATABASE_URL")
    if not raw:
        return f"sqlite:///{(data_dir / 'k1.db').resolve()}"
    parts = urlsplit(raw)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        # Heroku hands out postgres://, which SQLAlchemy 2 no longer accepts; K1
        # speaks psycopg 3, so every PostgreSQL URL gets the +psycopg driver.
        _check_host_port("DATABASE_URL", raw)
        if not parts.path.strip("/"):
            raise SettingsError(f"DATABASE_URL: no database name in {redact(raw)!r}")
        return urlunsplit(parts._replace(scheme="postgresql+psycopg"))
    if scheme == "sqlite":
        return raw
    raise SettingsError(
        f"DATABASE_URL: expected postgres://, postgresql:// or sqlite:///, got scheme {scheme!r}"
    )


def _secret_key(env: Mapping[str, str]) -> str:
    key = env.get("K1_SECRET_KEY", "")
    if not key:
        raise SettingsError(
            "K1_SECRET_KEY: not set. It signs API tokens; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(48))'` "
            "(`make run` writes one to .env)"
        )
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(
            f"K1_SECRET_KEY: must be at least {MIN_SECRET_KEY_LENGTH} characters, "
            f"got {len(key)}"
        )
    return key


def _optional_http_url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: expected an http(s):// URL, got {raw!r}")
    _check_host_port(name, raw)
    return raw.rstrip("/")


def _queue_names(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list of queue names; unset: ``default``, set but empty: none."""
    raw = env.get(name)
    if raw is None:
        return default
    names = tuple(dict.fromkeys(item.strip() for item in raw.split(",") if item.strip()))
    for queue in names:
        if not QUEUE_NAME.match(queue):
            raise SettingsError(f"{name}: {queue!r} is not a queue name "
                                "(1 to 200 of A-Z a-z 0-9 _ . : -)")
    return names


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = []
    for item in env.get(name, "").split(","):
        origin = item.strip().rstrip("/")
        if not origin:
            continue
        if origin == "*":
            raise SettingsError(f"{name}: '*' is not allowed; list the origins explicitly")
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise SettingsError(
                f"{name}: each origin must look like https://host[:port], got {origin!r}"
            )
        origins.append(origin)
    return tuple(origins)


def _int(
    env: Mapping[str, str], name: str, default: int, *, low: int | None = None,
    high: int | None = None,
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise SettingsError(f"{name}: must be {bounds}, got {value}")
    return value


def _choice(
    env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str, *,
    upper: bool = False,
) -> str:
    raw = env.get(name, "").strip() or default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise SettingsError(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _check_host_port(name: str, raw: str) -> None:
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise SettingsError(f"{name}: invalid port in {redact(raw)!r}") from None
    if not parts.hostname:
        raise SettingsError(f"{name}: no host in {redact(raw)!r}")


def redact(url: str) -> str:
    """The URL with its password hidden, for error messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
