"""Where a replay's steps run, and what a failing send leaves: in the web process under
eventlet the database steps run in eventlet's pool of real threads and the Celery publish
on the hub's thread (kombu's producers and connections are green there: a pool thread
that uses them can hang or fail); a letter is marked replayed once its task is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import select

from k1.broker import DOORBELL, queue_lists
from k1.connections import get_redis
from k1.db import session_scope
from k1.recovery.dlq.models import DeadLetter
from tests.recovery.test_dlq_api import letter, store

# The web app under eventlet, as `python -m k1.web` sets it up, answering the requests of
# argv[1] (a JSON list of [path, body]) with argv[2]'s token; for each request, which
# threads published Celery messages and ran SQL: "hub" (eventlet's, where every green
# thread runs) or "pool" (tpool's real threads).
EVENTLET_WEB = r"""
import eventlet
eventlet.monkey_patch()
import json, sys
from eventlet.patcher import original
real_threading = original("threading")
HUB = real_threading.get_ident()
from celery.signals import before_task_publish
from sqlalchemy import event
from k1.db import get_engine
from k1.settings import get_settings
from k1.web.app import create_app

seen = {"publish": set(), "sql": set()}
def where(kind):
    seen[kind].add("hub" if real_threading.get_ident() == HUB else "pool")
before_task_publish.connect(lambda **_: where("publish"), weak=False)
event.listen(get_engine(), "before_cursor_execute", lambda *_: where("sql"))
http = create_app(get_settings()).test_client()
answers = []
for path, body in json.loads(sys.argv[1]):
    for kind in seen:
        seen[kind].clear()
    answer = http.post(path, json=body, headers={"Authorization": "Bearer " + sys.argv[2]})
    answers.append({"status": answer.status_code, "body": answer.get_json(),
                    **{kind: sorted(threads) for kind, threads in seen.items()}})
print(json.dumps(answers))
"""


def test_a_replay_under_eventlet_publishes_on_the_hub_and_queries_in_the_pool(
        services: dict[str, object], make_token: Callable[..., str]) -> None:
    project, queue = f"p-{uuid.uuid4().hex[:8]}", f"replay-threads-{uuid.uuid4().hex[:8]}"
    ids = [store.record({**letter(project), "queue": queue}).letter_id for _ in range(3)]
    requests = [[f"/api/dlq/{ids[0]}/replay", {}],
                [f"/api/dlq/{ids[1]}/replay", {"kwargs": {"project_id": project,
                                                          "fail_times": 0}}],
                ["/api/dlq/replay", {"project_id": project}]]
    try:
        done = subprocess.run([sys.executable, "-c", EVENTLET_WEB, json.dumps(requests),
                               make_token("ada", project)], capture_output=True, text=True,
                              env=dict(os.environ), timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        plain, edited, bulk = json.loads(done.stdout.strip().splitlines()[-1])
        sent_to_broker = sum(get_redis().llen(name) for name in queue_lists(queue))
    finally:
        get_redis().delete(*queue_lists(queue), DOORBELL.format(queue))
    for answer in (plain, edited, bulk):
        assert answer["status"] == 200, answer
        assert answer["publish"] == ["hub"], f"Celery published from {answer['publish']}"
        assert answer["sql"] == ["pool"], f"SQL ran on {answer['sql']}"
    assert plain["body"]["status"] == "replayed" and edited["body"]["edited"] == ["kwargs"]
    assert bulk["body"]["replayed"] == 1  # the third: the others are replayed already
    with session_scope() as session:
        rows = {row.id: row for row in session.scalars(
            select(DeadLetter).where(DeadLetter.id.in_(ids)))}
    replayed = [plain["body"]["replay_task_id"], edited["body"]["replay_task_id"],
                *bulk["body"]["task_ids"]]
    assert [(rows[i].status, rows[i].replay_task_id) for i in ids] == [
        ("replayed", task_id) for task_id in replayed]
    assert sent_to_broker == 3  # each letter's task sent once


def test_a_bulk_replay_whose_send_fails_keeps_the_letters_sent_before_it(
        services: dict[str, object]) -> None:
    """Letters are marked in the transaction once their tasks are sent: a send that raises
    mid-batch (here Celery's own argument check: the letter's kwargs no longer fit the
    task) leaves its letter and those after it dead, and the one sent before it replayed,
    so a second replay does not send it again."""
    from k1.recovery.dlq.filters import LetterFilter

    project, queue = f"p-{uuid.uuid4().hex[:8]}", f"replay-partial-{uuid.uuid4().hex[:8]}"
    unfit = {**letter(project), "kwargs": {"project_id": project, "no_such_argument": 1}}
    ids = [store.record({**fields, "queue": queue}).letter_id
           for fields in (letter(project), unfit, letter(project))]
    try:
        with pytest.raises(TypeError):
            store.replay_matching(LetterFilter(project_id=project))
        sent_to_broker = sum(get_redis().llen(name) for name in queue_lists(queue))
    finally:
        get_redis().delete(*queue_lists(queue), DOORBELL.format(queue))
    with session_scope() as session:
        rows = {row.id: row for row in session.scalars(
            select(DeadLetter).where(DeadLetter.id.in_(ids)))}
    assert [rows[i].status for i in ids] == ["replayed", "dead", "dead"]
    assert rows[ids[0]].replay_task_id and sent_to_broker == 1
