"""A Conductor task claimed but never sent to Celery (Redis went between the claim and the
publish) is sent by the next poll: a leftover claim must not answer PENDING for ever.

In process, against the session's Redis and worker: no Conductor server is involved, the
poll is :func:`k1.conductor.bridge.hand_off` itself.
"""

from __future__ import annotations

from k1.conductor.bridge import CLAIM_KEY, COMPLETED, IN_PROGRESS, ConductorTask, hand_off
from k1.connections import get_redis
from tests.support import Process, wait_for


def test_a_claim_left_without_its_task_is_sent_by_the_next_poll(
        services, worker: Process, unique: str) -> None:
    task = ConductorTask(task_id=f"ct-{unique}", workflow_id=f"wf-{unique}",
                         task_type="k1.tasks.demo.flaky", workflow_name="claims_test",
                         input={"project_id": "acme"})
    orphan = f"celery-{unique}"
    get_redis().set(CLAIM_KEY.format(task.task_id), orphan)  # the claim, and no send

    answer = hand_off(task)
    assert answer.status == IN_PROGRESS and answer.output["celery_task_id"] == orphan

    completed = wait_for(lambda: (a := hand_off(task)).status == COMPLETED and a,
                         timeout=60, message=lambda: f"the claimed task never ran: "
                         f"{hand_off(task)}")
    # It ran once, as the Conductor task: the bridge's headers went with it.
    assert completed.output == {"project_id": "acme", "runs": 1,
                                "idempotency_key": task.task_id}, completed
