"""Starting workflows for K1, and the index of the executions K1 knows about.

    from k1.conductor.executions import start, recent
    wid = start("profile_workflow", {"data_path": "s3://x"}, project_id="acme", user_id="ada")
    recent(limit=20, projects={"acme"})     # newest first, with status from Conductor

Conductor's own search cannot filter on a project, so K1 keeps a small index in Redis:
every execution it starts, and every one whose task the bridge hands to Celery (failure
workflows, executions started elsewhere), with its name, version and project.

A start with an idempotency key (the Celery task ``k1.conductor.start_workflow`` passes its
own, so a redelivery or a replay starts nothing new) is made under a Redis lock on that
key: of two concurrent starts with one key, the second waits for the first and answers
its workflow id. A start that fails frees the lock, and the next try starts afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from redis.exceptions import LockNotOwnedError

from k1.conductor.client import (
    REQUEST_TIMEOUT,
    ConductorClient,
    ConductorError,
    ConductorUnavailable,
    check_start,
)
from k1.connections import get_redis
from k1.events import emit

INDEX_KEY = "k1:conductor:executions"  # sorted set: workflow id -> first seen (epoch s)
EXECUTION_KEY = "k1:conductor:execution:{}"  # hash: name, version, project_id, user_id
START_KEY = "k1:conductor:start:{}"  # idempotency key of a start -> workflow id
START_TTL = 7 * 24 * 3600  # a start redelivered within a week is recognised
STARTING_KEY = "k1:conductor:starting:{}"  # redis-py Lock held while that key's start is made
# A start's one Conductor call takes at most REQUEST_TIMEOUT (connect + read): a second
# start with the same key waits that long for the first (then StartInProgress, transient),
# and the lock outlives it with room to spare (a process that dies holding it frees it then).
START_WAIT = float(sum(REQUEST_TIMEOUT)) + 2
START_LOCK_TIMEOUT = 3 * START_WAIT
DEFAULT_RECENT = 20
MAX_RECENT = 200

log = logging.getLogger(__name__)


class StartInProgress(ConductorUnavailable):
    """Another start with the same idempotency key is still being made: try again (the
    Celery task retries), and the answer is that start's workflow id."""


def start(name: str, workflow_input: dict[str, Any] | None = None, *,
          version: int | None = None, project_id: str | None = None,
          user_id: str | None = None, idempotency_key: str | None = None,
          client: ConductorClient | None = None) -> str:
    """Start ``name`` (latest version unless ``version``); returns the workflow id.

    ``project_id`` is put into the workflow input, where every K1 workflow reads it.
    With an ``idempotency_key``, every call with that key answers the first start's
    workflow id, concurrent calls included (:class:`StartInProgress` if the first is
    still being made after :data:`START_WAIT`).
    :class:`ConductorInvalidInput` (naming the field) if the start could not be valid.
    """
    check_start(name, workflow_input or {}, version)
    workflow_input = dict(workflow_input or {})
    if project_id is not None:
        workflow_input["project_id"] = project_id

    def start_new() -> str:
        return (client or ConductorClient()).start_workflow(name, workflow_input,
                                                            version=version)

    if idempotency_key:
        workflow_id, started = _start_once(idempotency_key, start_new, name)
        if not started:  # the first call's: indexed and announced by it
            return workflow_id
    else:
        workflow_id = start_new()
    remember(workflow_id, name, version=version, project_id=project_id, user_id=user_id)
    emit("workflow_event", type="started", workflow_id=workflow_id, workflow_name=name,
         workflow_version=version, project_id=project_id, user_id=user_id, state="RUNNING")
    return workflow_id


def _start_once(idempotency_key: str, start_new: Callable[[], str],
                name: str) -> tuple[str, bool]:
    """(the workflow id recorded under ``idempotency_key``, False), or (``start_new()``'s,
    True) made and recorded while holding the key's lock (the record is read again once it is
    held: the holder before may have made it). A start that raises records nothing, and
    the lock is freed."""
    redis = get_redis()
    recorded = START_KEY.format(idempotency_key)
    existing = redis.get(recorded)
    if existing:
        return existing, False
    lock = redis.lock(STARTING_KEY.format(idempotency_key), timeout=START_LOCK_TIMEOUT,
                      blocking_timeout=START_WAIT)
    if not lock.acquire():
        raise StartInProgress(f"a start of {name} with idempotency key {idempotency_key!r} "
                              f"is still being made after {START_WAIT:g}s")
    try:
        existing = redis.get(recorded)
        if existing:
            return existing, False
        workflow_id = start_new()
        redis.set(recorded, workflow_id, ex=START_TTL)
        return workflow_id, True
    finally:
        try:
            lock.release()
        except LockNotOwnedError:  # held past its timeout: a second start may have been made
            log.warning("the start of %s (idempotency key %r) outlived its lock", name,
                        idempotency_key)


def remember(workflow_id: str, name: str | None, *, version: int | None = None,
             project_id: str | None = None, user_id: str | None = None) -> None:
    """Add an execution to the index (a no-op for one already there)."""
    fields = {"name": name or "", "version": "" if version is None else str(version),
              "project_id": project_id or "", "user_id": user_id or ""}
    pipe = get_redis().pipeline()
    pipe.zadd(INDEX_KEY, {workflow_id: time.time()}, nx=True)
    for key, value in fields.items():
        pipe.hsetnx(EXECUTION_KEY.format(workflow_id), key, value)
    pipe.execute()


def recent(limit: int = DEFAULT_RECENT, projects: Collection[str] | None = None,
           client: ConductorClient | None = None) -> list[dict[str, Any]]:
    """The newest executions (of ``projects`` only, unless None), with their status from
    Conductor; ``status`` is None when the server cannot be asked.
    """
    redis = get_redis()
    limit = max(1, min(limit, MAX_RECENT))
    found: list[dict[str, Any]] = []
    offset, batch = 0, max(limit * 2, 50)
    while len(found) < limit:
        ids = redis.zrevrange(INDEX_KEY, offset, offset + batch - 1, withscores=True)
        if not ids:
            break
        offset += batch
        for workflow_id, started in ids:
            info = redis.hgetall(EXECUTION_KEY.format(workflow_id))
            project = info.get("project_id") or None
            if projects is not None and project not in projects:
                continue
            found.append({"workflow_id": workflow_id, "name": info.get("name") or None,
                          "version": int(info["version"]) if info.get("version") else None,
                          "project_id": project, "user_id": info.get("user_id") or None,
                          "started_at": started})
            if len(found) == limit:
                break
    _add_status(found, client)
    return found


def _add_status(executions: list[dict[str, Any]], client: ConductorClient | None) -> None:
    try:
        client = client or ConductorClient()
    except ConductorError:
        client = None
    for execution in executions:
        execution["status"] = None
        if client is None:
            continue
        try:
            workflow = client.get_workflow(execution["workflow_id"])
        except ConductorError:
            continue
        execution["status"] = workflow.get("status")
        execution["version"] = workflow.get("workflowVersion", execution["version"])
        execution["name"] = workflow.get("workflowName") or execution["name"]


def forget_before(cutoff: float) -> list[str]:
    """Drop executions first seen before ``cutoff`` (epoch s) from the index; their ids."""
    redis = get_redis()
    ids = redis.zrangebyscore(INDEX_KEY, "-inf", cutoff)
    if ids:
        pipe = redis.pipeline()
        pipe.zrem(INDEX_KEY, *ids)
        pipe.delete(*(EXECUTION_KEY.format(i) for i in ids))
        pipe.execute()
    return ids
