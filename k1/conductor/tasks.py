"""Celery tasks of the Conductor integration (imported by workers through celeryconfig).

- ``k1.conductor.start_workflow``: start a workflow from Celery (API deferral, beat).
- ``k1.conductor.report_outcome``: reports enqueued as tasks by an earlier release
  (reports now go through the report stream, :mod:`.reports`).
- ``k1.conductor.render_report``, ``k1.conductor.compensate``,
  ``k1.conductor.prune_executions``: task types of the sample workflows (workflows/).

Importing this module also connects the bridge's signal handlers (:mod:`.bridge`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from k1 import headers
from k1.celery import app
from k1.conductor import bridge, executions
from k1.conductor.client import TERMINAL_WORKFLOW_STATUSES, ConductorClient, ConductorNotFound
from k1.conductor.registry import operator_only_workflows
from k1.conductor.reports import (
    HANDOFF_MAX_WAITS,
    HANDOFF_RECHECK,
    HANDOFF_RECHECK_MAX,
    settle_now,
)
from k1.connections import get_redis
from k1.recovery.errors import NonRetryableError
from k1.recovery.policy import RetryPolicy
from k1.settings import get_settings
from k1.tasks.base import K1Task

# Conductor may be down for a restart or an upgrade: keep trying for ~30 minutes
# (2 s doubling to 5 min), far below the broker visibility timeout per wait.
CONDUCTOR_CALL_POLICY = RetryPolicy(attempts=10, initial=2.0, maximum=300.0)
COMPENSATIONS_KEY = "k1:conductor:compensations"  # hash: workflow id -> what was undone
DEFAULT_PRUNE_AGE_DAYS = 30


class OperatorOnly(NonRetryableError):
    """An operator-only workflow was to be started on a project's behalf."""

    def __init__(self, name: str) -> None:
        super().__init__(f"workflow {name!r} is operator only: it is started for no project")


@app.task(base=K1Task, bind=True, name="k1.conductor.start_workflow", public=True,
          retry_policy=CONDUCTOR_CALL_POLICY)
def start_workflow(self: K1Task, name: str, version: int | None = None,
                   input: dict[str, Any] | None = None,
                   project_id: str | None = None) -> dict[str, str]:
    """Start workflow ``name`` (latest version unless ``version``) with ``input``.

    An operator-only workflow is platform-wide: it is started only for no project (a
    built-in schedule, an operator's start through the API), never on a project's behalf.
    """
    for_a_project = project_id is not None or self.request.get(headers.PROJECT) is not None
    if for_a_project and name in operator_only_workflows(get_settings().workflows_dir):
        raise OperatorOnly(name)
    workflow_id = executions.start(
        name, input, version=version, project_id=project_id,
        user_id=self.request.get(headers.USER), idempotency_key=self.idempotency_key(),
    )
    return {"workflow_id": workflow_id}


# Reports go through the report stream now (k1.conductor.reports); this task makes the
# ones an earlier release enqueued, which may still be queued when it is upgraded. No
# result kept: nobody asks for a report by id.
@app.task(base=K1Task, bind=True, name=bridge.REPORT_TASK, public=False, ignore_result=True,
          retry_policy=CONDUCTOR_CALL_POLICY)
def report_outcome(self: K1Task, conductor_task_id: str, workflow_id: str, status: str,
                   output: dict[str, Any] | None = None, reason: str | None = None,
                   celery_task_id: str | None = None, task_name: str | None = None,
                   project_id: str | None = None, check_state: bool = True) -> dict[str, str]:
    """Report a Celery task's outcome to Conductor (looking at the task's state first): the
    reports an earlier release enqueued as Celery tasks (see :mod:`k1.conductor.reports`).

    While the poller's IN_PROGRESS answer has not landed, the report comes back after
    ``HANDOFF_RECHECK`` seconds, doubling (a deferral: no attempt spent, no slot held);
    after ``HANDOFF_MAX_WAITS`` of those it reports anyway. A short Conductor blip is retried
    in-process (``settle_now``); a longer outage by the retry policy.
    """
    waited = self.deferrals()
    try:
        done = settle_now(conductor_task_id, workflow_id, status, output=output,
                          reason=reason, celery_task_id=celery_task_id, task_name=task_name,
                          check_state=check_state, pending_ok=waited >= HANDOFF_MAX_WAITS)
    except bridge.HandOffPending:
        carried = {**(self.request.headers or {}), headers.DEFERRALS: waited + 1}
        countdown = min(HANDOFF_RECHECK * 2**waited, HANDOFF_RECHECK_MAX)
        raise self.retry(countdown=countdown, headers=carried) from None
    return {"conductor_task_id": conductor_task_id, "outcome": done}


@app.task(base=K1Task, name="k1.conductor.render_report")
def render_report(project_id: str, analysis: dict[str, Any] | None = None) -> dict[str, Any]:
    """Render an analysis (``k1.tasks.analyze_profile``'s output) as a text report."""
    if not isinstance(analysis, dict):
        raise ValueError(f"analysis must be an object, got {type(analysis).__name__}")
    profile = analysis.get("profile") or {}
    lines = [f"Profile report for project {project_id}",
             f"data: {analysis.get('data_path', '?')}"]
    lines += [f"{key}: {profile[key]}" for key in sorted(profile)]
    return {"project_id": project_id, "report": "\n".join(lines),
            "score": profile.get("score")}


# Not public: it acts on whatever workflow id it is given; only the failure workflow runs it.
@app.task(base=K1Task, name="k1.conductor.compensate", public=False)
def compensate(project_id: str | None, workflow_id: str, failed_task_id: str | None = None,
               reason: str | None = None) -> dict[str, Any]:
    """Withdraw a failed review: record it once per workflow (idempotent)."""
    record = {"project_id": project_id, "failed_task_id": failed_task_id,
              "reason": reason, "at": time.time()}
    get_redis().hsetnx(COMPENSATIONS_KEY, workflow_id, json.dumps(record))
    return {"compensated": workflow_id, "project_id": project_id}


# Operator only: it prunes every project's executions, whatever project it is started for.
@app.task(base=K1Task, name="k1.conductor.prune_executions", operator_only=True)
def prune_executions(project_id: str | None = None,
                     older_than_days: int | None = None) -> dict[str, int]:
    """Delete finished executions older than ``older_than_days`` (default 30) from
    Conductor and from K1's index; running ones are kept.
    """
    days = DEFAULT_PRUNE_AGE_DAYS if older_than_days is None else int(older_than_days)
    old = executions.forget_before(time.time() - days * 86400)
    client = ConductorClient()
    pruned, kept = 0, []
    for workflow_id in old:
        try:
            status = client.get_workflow(workflow_id).get("status")
        except ConductorNotFound:
            continue
        if status in TERMINAL_WORKFLOW_STATUSES:
            client.remove_workflow(workflow_id)
            pruned += 1
        else:
            kept.append(workflow_id)
    for workflow_id in kept:  # still running: back into the index
        executions.remember(workflow_id, None)
    return {"pruned": pruned, "kept": len(kept)}
