"""A small client for the Conductor REST API, every call guarded by the "conductor" breaker.

    from k1.conductor.client import ConductorClient
    conductor = ConductorClient()                       # CONDUCTOR_SERVER_URL
    wid = conductor.start_workflow("profile_workflow", {"project_id": "acme"}, version=1)
    conductor.get_workflow(wid)["status"]               # "RUNNING", "COMPLETED", ...
    conductor.update_task(wid, task_id, "COMPLETED", output={"score": 3})

Plain ``requests``, not conductor-python: the SDK forces the ``spawn`` start method when
its task handler is imported, and the web process, the CLI and Celery workers must never
import it (ARCHITECTURE §5). Errors are translated once, here:

=====================  =============================================  =====================
exception              when                                           K1 classification
=====================  =============================================  =====================
ConductorUnavailable   connection refused, timeout, HTTP 5xx / 429     transient: retried
ConductorBreakerOpen   the "conductor" breaker is open                 deferred until it
                                                                       may half-open
ConductorNotFound      HTTP 404                                        dead
ConductorConflict      HTTP 409 (e.g. the definition exists)           dead
ConductorRejected      other HTTP 4xx (bad definition, bad input)      dead
=====================  =============================================  =====================
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import pybreaker
import requests

from k1.recovery.breakers import breaker
from k1.recovery.errors import NonRetryableError, TransientError
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


class ConductorNotFound(ConductorRejected):
    """HTTP 404: no such workflow, task or definition."""


class ConductorConflict(ConductorRejected):
    """HTTP 409: e.g. a workflow definition with that name and version exists."""


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
        """Start an execution; returns its workflow id."""
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
            # 5xx counts against it; 4xx answers do not (the breaker excludes them).
            response = breaker(BREAKER_NAME).call(self._send, method, path, **kwargs)
        except pybreaker.CircuitBreakerError as exc:
            raise ConductorBreakerOpen(str(exc), getattr(exc, "retry_after", None)) from exc
        except requests.HTTPError as exc:
            raise _translate(exc.response, method, path) from None
        except requests.RequestException as exc:
            raise ConductorUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        if not response.content:
            return None
        if "json" in response.headers.get("Content-Type", ""):
            return response.json()
        return response.text

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.session.request(method, self.base_url + path, timeout=self.timeout,
                                        **kwargs)
        response.raise_for_status()
        return response


def _translate(response: requests.Response, method: str, path: str) -> ConductorError:
    try:
        message = response.json().get("message") or response.text
    except ValueError:
        message = response.text
    text = f"{method} {path}: HTTP {response.status_code}: {message}"[:2000]
    status = response.status_code
    if status == 404:
        return ConductorNotFound(text, status)
    if status == 409:
        return ConductorConflict(text, status)
    if status == 429 or status >= 500:
        return ConductorUnavailable(text, status)
    return ConductorRejected(text, status)


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
