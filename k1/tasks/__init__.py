"""K1's tasks: the base class (:mod:`k1.tasks.base`), starting them
(:mod:`k1.tasks.submissions`), effects that happen once (:mod:`k1.tasks.effects`), and
the sample tasks (:mod:`k1.tasks.analysis`, :mod:`k1.tasks.demo`).

A task is private unless it says ``public=True``; one that acts platform-wide says
``operator_only=True`` and only an operator's token may start it.
"""

from __future__ import annotations

from k1.celery import app, load_task_modules


def public_task_names(*, operator: bool = False) -> list[str]:
    """Names of the tasks a client may start, sorted; ``operator`` adds the operator-only."""
    load_task_modules()
    return sorted(
        name for name, task in app.tasks.items()
        if (getattr(task, "public", False) and not getattr(task, "operator_only", False))
        or (operator and getattr(task, "operator_only", False))
    )
