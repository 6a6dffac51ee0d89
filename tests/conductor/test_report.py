"""The bridge's signal handlers only enqueue the report: the worker slot that ran the
task never calls Conductor (pure logic: the send is recorded, Conductor is a trap).
"""

from __future__ import annotations

from typing import Any

import pytest
from celery.app.task import Context

from k1 import headers
from k1.conductor import bridge


class _Task:
    name = "k1.tasks.analyze_profile"

    def __init__(self, **request: Any) -> None:
        self.request = Context(id="celery-1", **request)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(task_name: str, args: Any = (), kwargs: Any = None, **options: Any) -> str:
        calls.append((task_name, {"kwargs": kwargs, **options}))
        return "report-1"

    def no_conductor(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the worker slot called Conductor")

    monkeypatch.setattr(bridge.submissions, "send", record)
    monkeypatch.setattr(bridge, "settle", no_conductor)
    monkeypatch.setattr(bridge.ConductorClient, "_call", no_conductor)
    return calls


def test_success_and_failure_only_enqueue_the_report(sent) -> None:
    task = _Task(**{headers.CONDUCTOR_TASK: "ct-1", headers.CONDUCTOR_WORKFLOW: "wf-1",
                    headers.PROJECT: "acme"})
    bridge._on_success(sender=task, result=7)
    bridge._on_failure(sender=task, task_id="celery-1", exception=ValueError("bad input"))
    (name1, first), (name2, second) = sent
    assert name1 == name2 == bridge.REPORT_TASK
    assert first["kwargs"] | {"output": None} == {
        "conductor_task_id": "ct-1", "workflow_id": "wf-1", "status": bridge.COMPLETED,
        "output": None, "reason": None, "celery_task_id": "celery-1",
        "task_name": "k1.tasks.analyze_profile", "project_id": "acme", "check_state": False}
    assert first["kwargs"]["output"] == {"result": 7}
    assert second["kwargs"]["status"] == bridge.TERMINAL  # ValueError: retrying cannot help
    assert "bad input" in second["kwargs"]["reason"]
    assert first["headers"] == {headers.PROJECT: "acme"}


def test_a_task_outside_a_workflow_reports_nothing(sent) -> None:
    bridge._on_success(sender=_Task(), result=1)
    assert sent == []


def test_the_report_runs_on_the_platform_queue() -> None:
    from k1.celery import app

    assert app.amqp.router.route({}, bridge.REPORT_TASK)["queue"].name == "k1.platform"
    assert app.amqp.router.route({}, "k1.tasks.analyze_profile")["queue"].name == "celery"
