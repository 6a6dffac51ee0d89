"""``K1Entry``: a RedBeat entry that carries a K1 schedule, and its Redis form.

One Redis hash per schedule, ``k1:redbeat:<id>``, in RedBeat's own layout, so that
RedBeat's scheduler loads and advances it. Names are scoped per project: the id (RedBeat's
entry name) is ``<project_id>:<name>``, or the bare name for a project-less schedule
(built-ins), so two projects may each have a ``nightly`` and neither learns of the
other's (a name has no ``:``, so the last one splits an id). The hash holds:

- ``definition``: RedBeat's JSON (name, task, args, kwargs, options, schedule, enabled)
  plus K1's fields (project_id, timezone, catch_up, builtin, kwargs as given);
- ``meta``: RedBeat's ``last_run_at``, the anchor the next fire time is counted from;
- ``last_run_at``, ``last_task_id``, ``last_due_at``, ``last_status``,
  ``last_finished_at``: the history (:mod:`k1.scheduling.history`).

The score in RedBeat's sorted set is the next due time, or -1 while paused, so that beat
never even loads a paused schedule.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder
from redbeat.schedulers import RedBeatSchedulerEntry, get_redis

from k1 import headers
from k1.celery import app
from k1.scheduling.spec import ScheduleSpec
from k1.scheduling.timing import Cron, next_after

PAUSED_SCORE = -1  # RedBeat never loads entries scored below zero


class K1Encoder(RedBeatJSONEncoder):
    def default(self, obj: Any) -> Any:
        if isinstance(obj, Cron):
            return {"__type__": "k1_cron", "expr": obj.expr}
        return super().default(obj)


class K1Entry(RedBeatSchedulerEntry):
    """A RedBeat entry with K1's fields: ``K1Entry.from_spec(spec, app=app)``."""

    def __init__(self, name=None, task=None, schedule=None, args=None, kwargs=None,
                 enabled=True, options=None, *, project_id=None, timezone="UTC",
                 catch_up="once", builtin=False, spec_kwargs=None, **clsargs):
        super().__init__(name=name, task=task, schedule=schedule, args=args, kwargs=kwargs,
                         enabled=enabled, options=options, **clsargs)
        self.project_id, self.timezone, self.catch_up = project_id, timezone, catch_up
        self.builtin = builtin
        self.spec_kwargs = spec_kwargs if spec_kwargs is not None else dict(self.kwargs)

    @classmethod
    def from_spec(cls, spec: ScheduleSpec, app: Any, last_run_at: datetime | None = None,
                  sid: str | None = None) -> K1Entry:
        """The entry for ``spec``, stored under ``sid`` (default: its per-project id)."""
        sid = sid or schedule_id(spec.project_id, spec.name)
        options = {"headers": {headers.SCHEDULE: sid}}
        entry = cls(sid, spec.task, spec.timing(), list(spec.args), spec.call_kwargs(),
                    spec.enabled, options, project_id=spec.project_id, timezone=spec.timezone,
                    catch_up=spec.catch_up, builtin=spec.builtin, spec_kwargs=dict(spec.kwargs),
                    app=app)
        entry.last_run_at = last_run_at
        return entry

    @property
    def spec_name(self) -> str:
        """The schedule's name within its project (``name`` is RedBeat's, the id)."""
        return name_of(self.name)

    def spec(self) -> ScheduleSpec:
        cron = self.schedule.expr if isinstance(self.schedule, Cron) else None
        every = None if cron else self.schedule.run_every.total_seconds()
        if every is not None and every.is_integer():
            every = int(every)
        return ScheduleSpec(
            name=self.spec_name, task=self.task, cron=cron, every=every, args=list(self.args or []),
            kwargs=dict(self.spec_kwargs), enabled=self.enabled, timezone=self.timezone,
            project_id=self.project_id, catch_up=self.catch_up, builtin=self.builtin)

    def definition(self) -> str:
        return json.dumps({
            "name": self.name, "task": self.task, "args": self.args, "kwargs": self.kwargs,
            "options": self.options, "schedule": self.schedule, "enabled": self.enabled,
            "project_id": self.project_id, "timezone": self.timezone,
            "catch_up": self.catch_up, "builtin": self.builtin, "spec_kwargs": self.spec_kwargs,
        }, cls=K1Encoder)

    def encoded_meta(self) -> str:
        return json.dumps({"last_run_at": self.last_run_at}, cls=K1Encoder)

    @property
    def due_at(self) -> datetime:
        """The next fire time (now if overdue). RedBeat's own adds the time *remaining from
        now* to ``last_run_at``, which is early by the time since the last run: an entry
        advanced or edited long after its last run would be loaded on every loop."""
        now = self._default_now()
        if self.last_run_at is None:
            return now
        return max(next_after(self.schedule, self.last_run_at), now)

    @property
    def score(self) -> float:
        """The exact due time (RedBeat's own is floored to the second), -1 while paused."""
        if not self.enabled:
            return PAUSED_SCORE
        return self.due_at.timestamp()

    @staticmethod
    def decode_definition(definition: str) -> dict[str, Any]:
        fields = json.loads(definition, cls=RedBeatJSONDecoder)
        schedule = fields["schedule"]
        if isinstance(schedule, dict) and schedule.get("__type__") == "k1_cron":
            fields["schedule"] = Cron(schedule["expr"], fields.get("timezone", "UTC"))
        return fields

    def save(self) -> K1Entry:
        """Write the entry as is (the store adds the checks; see ScheduleStore)."""
        with get_redis(self.app).pipeline() as pipe:
            pipe.hset(self.key, "definition", self.definition())
            pipe.hsetnx(self.key, "meta", self.encoded_meta())
            pipe.zadd(self.app.redbeat_conf.schedule_key, {self.key: self.score})
            pipe.execute()
        return self


def entry_from_fields(fields: dict[str, str], app: Any) -> K1Entry:
    """A K1Entry from the hash read with HGETALL (KeyError if it has no definition)."""
    if not fields.get("definition"):
        raise KeyError("definition")
    definition = K1Entry.decode_definition(fields["definition"])
    meta = K1Entry.decode_meta(fields.get("meta"))
    entry = K1Entry(app=app, **definition)
    entry.last_run_at = meta.get("last_run_at")
    return entry


def schedule_id(project_id: str | None, name: str) -> str:
    """The id of schedule ``name`` of ``project_id``: its RedBeat entry name and key."""
    return name if project_id is None else f"{project_id}:{name}"


def name_of(sid: str) -> str:
    return sid.rpartition(":")[2]


def entry_key(sid: str) -> str:
    """RedBeat's key for schedule id ``sid`` (``redbeat_key_prefix`` + id)."""
    return app.conf.redbeat_key_prefix + sid
