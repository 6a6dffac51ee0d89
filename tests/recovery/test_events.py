"""What recovery tells the dashboard: deaths, DLQ changes and breaker transitions arrive
over Socket.IO through the real web process."""

from __future__ import annotations

import pytest

from k1.recovery import breakers
from tests.conftest import API
from tests.events.sockets import Listener
from tests.recovery.conftest import post_task, wait_letter

pytestmark = pytest.mark.usefixtures("worker")


def test_a_death_and_its_replay_reach_the_project_room(web: str, api: API, make_token) -> None:
    with Listener(web, make_token("ada", "acme")) as ada:
        assert ada.subscribe("acme")["ok"]
        task_id = post_task(api, "k1.tasks.demo.flaky", permanent=True)
        letter = wait_letter(task_id)
        dead = ada.wait_for(lambda r: r.name == "task_event" and r.data["task_id"] == task_id
                            and r.data["type"] == "dead", what="task_event dead")
        assert dead.data["letter_id"] == letter.id and dead.data["project_id"] == "acme"
        assert dead.data["exception"] == "NonRetryableError" and dead.data["attempt"] == 1
        added = ada.wait_for(lambda r: r.name == "dlq_changed" and r.data["type"] == "added"
                             and r.data["letter_id"] == letter.id, what="dlq_changed added")
        assert added.data["task_name"] == "k1.tasks.demo.flaky"
        replay = api.post(f"/api/dlq/{letter.id}/replay").json()
        replayed = ada.wait_for(lambda r: r.name == "dlq_changed" and r.data["type"] == "replayed"
                                and r.data["letter_id"] == letter.id, what="dlq_changed replayed")
        assert replayed.data["replay_task_id"] == replay["replay_task_id"]


def test_a_breaker_transition_is_announced_once(web: str, make_token, unique: str) -> None:
    name = f"dep-{unique}"
    first = breakers.breaker(name)
    # A second, uncached instance on the same Redis state: what another process holds.
    second = breakers._breaker.__wrapped__(name, first.fail_max, first.reset_timeout)

    def fail() -> None:
        raise ConnectionError("down")

    with Listener(web, make_token("ops", "*")) as ops:
        for _ in range(5):
            with pytest.raises((ConnectionError, breakers.BreakerOpen)):
                first.call(fail)
        with pytest.raises(breakers.BreakerOpen):
            second.call(fail)  # notices the open state: a listener call, but no new event
        ops.wait_for(lambda r: r.name == "breaker_state" and r.data["name"] == name,
                     what="breaker_state")
        breakers.reset(name)
        ops.wait_for(lambda r: r.name == "breaker_state" and r.data["name"] == name
                     and r.data["type"] == "closed", what="breaker_state closed")
        states = [r.data["type"] for r in ops.events(
            lambda r: r.name == "breaker_state" and r.data["name"] == name)]
    assert states == ["open", "closed"]
