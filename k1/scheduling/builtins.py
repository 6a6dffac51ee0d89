"""Built-in schedules: platform housekeeping defined in code, created when beat starts.

A built-in is created only if it is missing (an operator's changes to it stand) and only
if its task is registered in this process, so a task that has not landed yet simply has
no schedule. Built-ins have no project: only operator tokens may change them. Deleting
one lasts until the next beat start; pause it to stop it for good.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from k1.celery import load_task_modules
from k1.scheduling.spec import InvalidSchedule, ScheduleSpec

log = logging.getLogger(__name__)

BUILTINS: tuple[ScheduleSpec, ...] = (
    # Dead-letter housekeeping (k1.recovery.dlq.tasks).
    ScheduleSpec("dlq-retention", "k1.dlq.enforce_retention", cron="0 2 * * *", builtin=True),
    ScheduleSpec("dlq-depth-snapshot", "k1.dlq.snapshot_depth", cron="*/15 * * * *",
                 builtin=True),
    ScheduleSpec("dlq-spool-drain", "k1.dlq.drain_spool", every=30, builtin=True),
    # Task history housekeeping (k1.history.tasks).
    ScheduleSpec("history-retention", "k1.history.enforce_retention", cron="30 2 * * *",
                 builtin=True),
    # The nightly workflow (workflows/maintenance_workflow.json) through the Conductor
    # bridge. Created paused: it needs a Conductor server; `k1 schedule resume
    # nightly-workflow` turns it on. Its kwargs must match k1.conductor.start_workflow's
    # signature (a mismatch is logged and the built-in skipped).
    ScheduleSpec("nightly-workflow", "k1.conductor.start_workflow", cron="0 3 * * *",
                 kwargs={"name": "maintenance_workflow"}, enabled=False, builtin=True),
)


class Store(Protocol):
    """What creating built-ins needs of :class:`k1.scheduling.store.ScheduleStore` (which
    reads :func:`registered_builtin_tasks`: this module does not import it back)."""

    app: Any

    def known_tasks(self) -> Any: ...

    def create(self, spec: ScheduleSpec, *, exist_ok: bool = False) -> Any: ...


def registered_builtin_tasks(app: Any, specs: tuple[ScheduleSpec, ...] = BUILTINS) -> set[str]:
    load_task_modules()
    return {spec.task for spec in specs if spec.task in app.tasks}


def ensure_builtins(store: Store, specs: tuple[ScheduleSpec, ...] = BUILTINS
                    ) -> list[str]:
    """Create the missing built-ins whose task is registered; returns the names created."""
    registered = registered_builtin_tasks(store.app, specs)
    created = []
    for spec in specs:
        if spec.task not in registered:
            log.info("built-in schedule %s skipped: task %s is not registered",
                     spec.name, spec.task)
            continue
        try:
            checked = spec.checked(store.known_tasks())
        except InvalidSchedule as exc:
            log.warning("built-in schedule %s skipped: %s", spec.name, exc)
            continue
        if store.create(checked, exist_ok=True) is not None:
            created.append(spec.name)
            log.info("built-in schedule %s created", spec.name)
    return created
