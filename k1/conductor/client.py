"""A small client for the Conductor REST API, every call guarded by the "conductor" breaker.

    from k1.conductor.client import ConductorClient
    conductor = ConductorClient()                       # CONDUCTOR_SERVER_URL
    wid = conductor.start_workflow("profile_workflow", {"project_id": "acme"}, version=1)
    conductor.get_workflow(wid)["status"]               # "RUNNING", "COMPLETED", ...
    conductor.update_task(wid, task_id, "COMPLETED", output={"score": 3})

Plain ``requests``, not conductor-python: the SDK forces the ``spawn`` start method when
its task handler is imported, and the web process, the CLI and Celery workers must never
import it (see docs/conductor.md). Errors are translated once, here:

=====================  =============================================  =====================
exception              when                                           K1 classification
=====================  =============================================  =====================
ConductorUnavailable   connection refused, timeout, HTTP 5xx / 429     transient: retried
ConductorBreakerOpen   the "conductor" breaker is open                 deferred until it
                                                                       may half-open
ConductorNotFound      HTTP 404                                        dead
ConductorConflict      HTTP 409 (e.g. the definition exists), or 500   dead
                       saying "already exists" (a concurrent create)
ConductorRejected      other HTTP 4xx (bad definition, bad input)      dead
=====================  =============================================  =====================
"""

from __future__ import annotations

import functools
import json
import math
import re
import urllib.parse
from typing import Any

import pybreaker
import requests

from k1.recovery.breakers import breaker
from k1.recovery.errors import NonRetryableError, TransientError, is_transient_status
from k1.settings import get_settings

BREAKER_NAME = "conductor"
# (connect, read) seconds: the server answers in milliseconds when healthy; a long read
# would hold a web request or a worker slot while it is down.
REQUEST_TIMEOUT = (3.05, 15)
TERMINAL_TASK_STATUSES = frozenset({
    "COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "FAILED_WITH_TERMINAL_ERROR",
    "CANCELED", "TIMED_OUT", "SKIPPED",
})
TERMINAL_WORKFLOW_STATUSES = frozenset({"COMPLETED", "FAILED", "TIMED_OUT", "TERMINATED"})
TASK_RESULT_STATUSES = ("COMPLETED", "FAILED", "FAILED_WITH_TERMINAL_ERROR", "IN_PROGRESS")
# What a start may carry. Conductor keeps versions in a Java int; names as K1 and Conductor
# accept them (no ':', no spaces or control characters); the input is stored with every
# execution and task, so it stays small (data goes by reference, e.g. a ``data_path``).
MAX_VERSION = 2**31 - 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")
MAX_INPUT_BYTES = 64 * 1024
MAX_INPUT_DEPTH = 32  # nesting levels of objects and lists
INT64 = (-(2**63), 2**63 - 1)  # Conductor reads JSON numbers as Java longs or doubles
# A 5xx whose message says the server could not read the request is the caller's fault:
# Spring/Jackson's words for an unreadable body or parameter.
REQUEST_FAULT_MARKERS = ("JSON parse error", "out of range of", "Cannot deserialize",
                         "NumberFormatException", "not a valid", "HttpMessageNotReadable",
                         "MethodArgumentTypeMismatch", "Failed to convert value")
# Two creates of one definition at once both pass Conductor's existence check; the loser's
# insert then fails and the server answers 500 with the message its 409 carries.
CONFLICT_MARKERS = ("already exists",)


class ConductorError(Exception):
    """A Conductor call failed; ``status`` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ConductorNotConfigured(ConductorError, NonRetryableError):
    """CONDUCTOR_SERVER_URL is not set."""


class ConductorUnreachable(ConductorError):
    """Conductor cannot be asked now: the server is down or its breaker is open."""


class ConductorUnavailable(ConductorUnreachable, TransientError):
    """The server cannot be reached, timed out or answered 5xx / 429."""


class ConductorBreakerOpen(ConductorUnreachable, pybreaker.CircuitBreakerError):
    """The "conductor" breaker is open: K1 tasks wait ``retry_after`` seconds for it
    (a deferral, which spends no retry attempt).
    """

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConductorRejected(ConductorError, NonRetryableError):
    """The server refused the request (HTTP 4xx): retrying the same request cannot help."""


class ConductorInvalidInput(ConductorRejected):
    """K1 refused to send a request built from the caller's input; ``field`` names the
    part that is wrong (``version``, ``input.a.b``...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ConductorNotFound(ConductorRejected):
    """HTTP 404: no such workflow, task or definition."""


class ConductorConflict(ConductorRejected):
    """HTTP 409, or a 500 that says "already exists": e.g. a workflow definition with that
    name and version exists (a concurrent create's loser gets the 500)."""


class ConductorClient:
    """The Conductor calls K1 makes. ``base_url`` ends in ``/api``."""

    def __init__(self, base_url: str | None = None, *, timeout: Any = REQUEST_TIMEOUT) -> None:
        url = base_url or get_settings().conductor_server_url
        if not url:
            raise ConductorNotConfigured("CONDUCTOR_SERVER_URL is not set")
        self.base_url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    # -- metadata --------------------------------------------------------------------

    def list_workflow_defs(self) -> list[dict[str, Any]]:
        """Every version of every workflow definition."""
        return self._call("GET", "/metadata/workflow")

    def get_workflow_def(self, name: str, version: int | None = None) -> dict[str, Any] | None:
        """One version (the latest when ``version`` is None), or None if unknown."""
        params = {"version": version} if version is not None else None
        try:
            return self._call("GET", f"/metadata/workflow/{_quote(name)}", params=params)
        except ConductorNotFound:
            return None

    def create_workflow_def(self, definition: dict[str, Any]) -> None:
        """Create one version; :class:`ConductorConflict` if it exists."""
        self._call("POST", "/metadata/workflow", json=definition)

    def get_task_def(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", f"/metadata/taskdefs/{_quote(name)}")
        except ConductorNotFound:
            return None

    def register_task_defs(self, definitions: list[dict[str, Any]]) -> None:
        """Create or replace task definitions (Conductor keeps no versions of these)."""
        self._call("POST", "/metadata/taskdefs", json=definitions)

    # -- executions ------------------------------------------------------------------

    def start_workflow(self, name: str, workflow_input: dict[str, Any], *,
                       version: int | None = None, correlation_id: str | None = None) -> str:
        """Start an execution; returns its workflow id. :class:`ConductorInvalidInput` if
        the start could not be valid (nothing is sent).
        """
        check_start(name, workflow_input, version)
        body: dict[str, Any] = {"name": name, "input": workflow_input}
        if version is not None:
            body["version"] = version
        if correlation_id:
            body["correlationId"] = correlation_id
        return self._call("POST", "/workflow", json=body)

    def get_workflow(self, workflow_id: str, *, include_tasks: bool = False) -> dict[str, Any]:
        return self._call("GET", f"/workflow/{_quote(workflow_id)}",
                          params={"includeTasks": str(include_tasks).lower()})

    def search_workflows(self, query: str, *, size: int = 20) -> list[dict[str, Any]]:
        """Execution summaries matching a Conductor search ``query``, newest first."""
        found = self._call("GET", "/workflow/search",
                           params={"query": query, "size": size, "sort": "startTime:DESC"})
        return found.get("results", [])

    def rerun_from_task(self, workflow_id: str, task_id: str) -> None:
        """Run a terminal workflow again from ``task_id`` (the same task id is re-queued)."""
        self._call("POST", f"/workflow/{_quote(workflow_id)}/rerun",
                   json={"reRunFromWorkflowId": workflow_id, "reRunFromTaskId": task_id})

    def remove_workflow(self, workflow_id: str) -> None:
        """Delete a (terminal) execution from the server's store."""
        self._call("DELETE", f"/workflow/{_quote(workflow_id)}/remove",
                   params={"archiveWorkflow": "false"})

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/tasks/{_quote(task_id)}")

    def update_task(self, workflow_id: str, task_id: str, status: str, *,
                    output: dict[str, Any] | None = None, reason: str | None = None,
                    callback_after_seconds: int | None = None) -> None:
        """Report a task's outcome (``POST /api/tasks``); ignored by Conductor when the
        task or its workflow is terminal already.
        """
        if status not in TASK_RESULT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(TASK_RESULT_STATUSES)}")
        body: dict[str, Any] = {"workflowInstanceId": workflow_id, "taskId": task_id,
                                "status": status, "outputData": output or {}}
        if reason:
            body["reasonForIncompletion"] = reason[:1000]
        if callback_after_seconds is not None:
            body["callbackAfterSeconds"] = callback_after_seconds
        self._call("POST", "/tasks", json=body)

    def complete_task_sync(self, workflow_id: str, task_ref_name: str,
                           output: dict[str, Any]) -> dict[str, Any]:
        """Complete the running task ``task_ref_name`` of a workflow and return the
        workflow as the update left it: one round trip instead of an update and a GET.
        """
        return self._call("POST", f"/tasks/{_quote(workflow_id)}/{_quote(task_ref_name)}"
                                  "/COMPLETED/sync", json=output)

    def healthy(self) -> bool:
        try:
            response = self.session.get(self.base_url.removesuffix("/api") + "/health",
                                        timeout=self.timeout)
            return response.ok and response.json().get("healthy", True)
        except (requests.RequestException, ValueError):
            return False

    # -- transport -------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            # The one call site of the "conductor" breaker: an unreachable server or a
            # 5xx counts against it; an answer that blames the request returns from
            # _send, which the breaker counts as a success, as it does its excluded errors.
            response = breaker(BREAKER_NAME).call(self._send, method, path, **kwargs)
        except pybreaker.CircuitBreakerError as exc:
            raise ConductorBreakerOpen(str(exc), getattr(exc, "retry_after", None)) from exc
        except requests.HTTPError as exc:
            raise _translate(exc.response, method, path) from None
        except requests.RequestException as exc:
            raise ConductorUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if not response.ok:
            raise _translate(response, method, path)
        if not response.content:
            return None
        if "json" in response.headers.get("Content-Type", ""):
            return response.json()
        return response.text

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                        **kwargs)
        if not response.ok and not _blames_request(response):
            response.raise_for_status()  # the server's failure: counted by the breaker
        return response


@functools.cache
def worker_client() -> ConductorClient:
    """One client per worker process: its session keeps the connection to the server
    open across reports, instead of a TCP handshake per report.
    """
    return ConductorClient()


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return (body.get("message") if isinstance(body, dict) else None) or response.text


def _blames_request(response: requests.Response) -> bool:
    """The answer says the request was wrong, not that the server is failing."""
    if not is_transient_status(response.status_code):
        return True
    return response.status_code == 500 and _says(
        response, REQUEST_FAULT_MARKERS + CONFLICT_MARKERS)


def _says(response: requests.Response, markers: tuple[str, ...]) -> bool:
    message = _message(response)
    return any(marker in message for marker in markers)


def _translate(response: requests.Response, method: str, path: str) -> ConductorError:
    status = response.status_code
    text = f"{method} {path}: HTTP {status}: {_message(response)}"[:2000]
    if status == 404:
        return ConductorNotFound(text, status)
    if status == 409 or (status == 500 and _says(response, CONFLICT_MARKERS)):
        return ConductorConflict(text, status)
    if _blames_request(response):
        return ConductorRejected(text, status)
    return ConductorUnavailable(text, status)


def check_start(name: Any, workflow_input: Any, version: Any) -> None:
    """Raise :class:`ConductorInvalidInput` naming the field unless a start with these
    values can be sent: ``name`` a workflow name, ``version`` None or 1..2^31-1,
    ``workflow_input`` a JSON object of at most ``MAX_INPUT_BYTES`` whose numbers fit
    Conductor's and whose strings can be stored (no NUL, no lone surrogate).
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConductorInvalidInput("name", "letters, digits, '_', '.', '-' (1-255)")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)
                                or not 1 <= version <= MAX_VERSION):
        raise ConductorInvalidInput("version", f"must be an integer from 1 to {MAX_VERSION}")
    if not isinstance(workflow_input, dict):
        raise ConductorInvalidInput("input", "must be a JSON object")
    _check_value(workflow_input, "input", 0)
    size = len(json.dumps(workflow_input, separators=(",", ":")).encode())
    if size > MAX_INPUT_BYTES:
        raise ConductorInvalidInput("input", f"{size} bytes as JSON; at most "
                                             f"{MAX_INPUT_BYTES} (pass large data by reference)")


def _check_value(value: Any, where: str, depth: int) -> None:
    if depth > MAX_INPUT_DEPTH:
        raise ConductorInvalidInput(where, f"nested deeper than {MAX_INPUT_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConductorInvalidInput(where, "object keys must be strings")
            _check_string(key, f"{where} (a key)")
            _check_value(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ConductorInvalidInput(where, "integer out of the 64-bit range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ConductorInvalidInput(where, "must be a finite number")
    else:
        raise ConductorInvalidInput(where, f"{type(value).__name__} is not a JSON value")


def _check_string(text: str, where: str) -> None:
    if "\x00" in text:
        raise ConductorInvalidInput(where, "contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConductorInvalidInput(where, "contains a lone surrogate") from None


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
