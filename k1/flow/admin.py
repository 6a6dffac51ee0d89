"""Run-time management of limits, shared by the API (k1/web/limits.py) and the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from k1.flow import fleet_declared_limits, gate, limits, metrics

WORKERS_TIMEOUT = 1.0  # s to wait for workers to list their tasks (a name unknown here)


def overview(scope: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """Every limit in force (declared on a task or set at run time), with its live use.

    ``scope``: the projects a caller may see (None: every one, an operator). A key is
    a tenant's data: a per-project limit shows such a caller only its projects' keys,
    and a limit per argument value no key at all (its values may be any project's).
    """
    from k1.celery import load_task_modules

    load_task_modules()
    runtime = limits.read_runtime()
    in_force = limits.effective(fleet_declared_limits(), runtime)
    described = [_described(in_force[name], runtime) for name in sorted(in_force)]
    if scope is not None:
        for limit in described:
            limit["usage"] = [use for use in limit["usage"]
                              if _key_visible(limit["per"], str(use["key"]), scope)]
    return described


def _key_visible(per: str, key: str, scope: frozenset[str]) -> bool:
    if per == limits.PER_GLOBAL:
        return True
    return per == limits.PER_PROJECT and key in scope


def put(name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """Set limit ``name`` at run time; :class:`~k1.flow.limits.InvalidLimit` names the
    field at fault (an unknown task included)."""
    from k1.celery import app, load_task_modules

    limit = limits.Limit.from_dict(name, data)
    load_task_modules()
    unknown = [task for task in limit.tasks if task not in app.tasks]
    if unknown:  # perhaps registered only by workers (their own --include)
        replies = app.control.inspect(timeout=WORKERS_TIMEOUT).registered() or {}
        on_workers = {name for names in replies.values() for name in names or ()}
        unknown = [task for task in unknown if task not in on_workers]
    if unknown:
        raise limits.InvalidLimit("tasks", f"unknown task {unknown[0]!r}")
    limits.save_runtime(limit)
    return _described(limit, {name: limit})


def delete(name: str) -> dict[str, Any] | None:
    """Delete run-time limit ``name``; None if there is none. A limit declared in code
    under that name applies again (returned as ``now``)."""
    from k1.celery import load_task_modules

    if not limits.delete_runtime(name):
        return None
    load_task_modules()
    code = fleet_declared_limits().get(name)
    if code is None:
        gate.forget(name)
        metrics.forget_waits(name)
    return {"deleted": name, "now": _described(code, {}) if code else None}


def _described(limit: limits.Limit, runtime: Mapping[str, limits.Limit]) -> dict[str, Any]:
    return {**limit.as_dict(), "source": "runtime" if limit.name in runtime else "code",
            "usage": gate.usage(limit)}
