"""The bridge's signal handlers only add the report to the report stream (real Redis): the
worker slot that ran the task never calls Conductor (a trap here) and sends no task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.app.task import Context
from kombu.utils.json import loads

from k1 import headers
from k1.conductor import bridge
from k1.connections import get_redis


class _Task:
    name = "k1.tasks.analyze_profile"

    def __init__(self, **request: Any) -> None:
        self.request = Context(id="celery-1", **request)


@pytest.fixture
def slot(services: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A worker slot whose Conductor calls and task sends are traps; the stream empty."""
    store: redis.Redis = get_redis()
    store.delete(bridge.REPORT_STREAM)

    def trap(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the worker slot called Conductor or sent a task")

    monkeypatch.setattr(bridge.submissions, "send", trap)
    monkeypatch.setattr(bridge, "settle", trap)
    monkeypatch.setattr(bridge.ConductorClient, "_call", trap)
    yield
    store.delete(bridge.REPORT_STREAM)


def stream() -> list[dict[str, Any]]:
    return [loads(fields[bridge.REPORT_FIELD])
            for _id, fields in get_redis().xrange(bridge.REPORT_STREAM)]


def test_success_and_failure_only_add_the_report_to_the_stream(slot) -> None:
    task = _Task(**{headers.CONDUCTOR_TASK: "ct-1", headers.CONDUCTOR_WORKFLOW: "wf-1",
                    headers.PROJECT: "acme"})
    bridge._on_success(sender=task, result=7)
    bridge._on_failure(sender=task, task_id="celery-1", exception=ValueError("bad input"))
    first, second = stream()
    assert first == {
        "conductor_task_id": "ct-1", "workflow_id": "wf-1", "status": bridge.COMPLETED,
        "output": {"result": 7}, "reason": None, "celery_task_id": "celery-1",
        "task_name": "k1.tasks.analyze_profile", "project_id": "acme", "check_state": False}
    assert second["status"] == bridge.TERMINAL  # ValueError: retrying cannot help
    assert "bad input" in second["reason"]


def test_a_replayed_task_reports_with_a_state_check(slot) -> None:
    task = _Task(**{headers.CONDUCTOR_TASK: "ct-1", headers.CONDUCTOR_WORKFLOW: "wf-1",
                    headers.REPLAY_OF: "letter-1"})
    bridge._on_success(sender=task, result={"score": 1})
    (report,) = stream()
    assert report["check_state"] is True and report["output"] == {"score": 1}


def test_a_task_outside_a_workflow_reports_nothing(slot) -> None:
    bridge._on_success(sender=_Task(), result=1)
    assert stream() == []


def test_reports_of_an_earlier_release_run_on_the_platform_queue() -> None:
    from k1.celery import app

    assert app.amqp.router.route({}, bridge.REPORT_TASK)["queue"].name == "k1.platform"
    assert app.amqp.router.route({}, "k1.tasks.analyze_profile")["queue"].name == "celery"
