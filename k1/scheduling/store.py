"""The schedule store: K1 schedules kept as RedBeat entries, checked before written.

    store = ScheduleStore()
    spec = store.validate({"name": "nightly", "task": "k1.tasks.demo.flaky",
                           "cron": "0 2 * * *", "timezone": "Europe/Paris",
                           "project_id": "acme"})            # InvalidSchedule
    schedule = store.create(spec)                           # ScheduleExists
    store.replace(schedule, schedule.spec.patched({"every": 60}, store.known_tasks()))
    store.pause("nightly", "acme"); store.resume("nightly", "acme")
    task_id = store.run_now(store.get("nightly", "acme"), user_id="ada")
    store.delete("nightly", "acme")

Names are scoped per project (see :mod:`k1.scheduling.entry`): a schedule is addressed by
its name and, where that name is used in several projects, its project
(:class:`AmbiguousSchedule` otherwise).

Each write is one atomic Redis script: a schedule is saved whole or not at all, an update
applies only to the version it was computed from (else :class:`ScheduleConflict`), and a
running beat sees it on its next loop (``K1_BEAT_MAX_LOOP_INTERVAL``), with no restart.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from redbeat.schedulers import ensure_conf

from k1 import headers as k1_headers
from k1.celery import app as celery_app
from k1.connections import get_redis
from k1.scheduling import history
from k1.scheduling.builtins import registered_builtin_tasks
from k1.scheduling.entry import K1Entry, entry_from_fields, entry_key, name_of, schedule_id
from k1.scheduling.spec import InvalidSchedule, ScheduleSpec, TaskLookup
from k1.scheduling.timing import describe, upcoming
from k1.tasks import public_task_names
from k1.tasks.submissions import check_arguments, send, submit

UPCOMING_COUNT = 5  # fire times listed per schedule
HISTORY_FIELDS = ("last_run_at", "last_due_at", "last_task_id", "last_status", "last_finished_at")

# KEYS: entry, RedBeat's sorted set, the bare-name key. ARGV: mode ('create' | 'replace'),
# definition, meta ('' keeps it), score, expected definition (replace only), project id.
# A create also finds the name taken by a schedule of the same project stored under its
# bare name (before names were scoped per project).
_SAVE = """
if ARGV[1] == 'create' then
  if redis.call('exists', KEYS[1]) == 1 then return 0 end
  if KEYS[3] ~= KEYS[1] then
    local old = redis.call('hget', KEYS[3], 'definition')
    local ok, fields = pcall(cjson.decode, old or '')
    if ok and type(fields) == 'table' and fields['project_id'] == ARGV[6] then return 0 end
  end
elseif redis.call('hget', KEYS[1], 'definition') ~= ARGV[5] then
  return 0
end
redis.call('hset', KEYS[1], 'definition', ARGV[2])
if ARGV[3] ~= '' then redis.call('hset', KEYS[1], 'meta', ARGV[3]) end
redis.call('zadd', KEYS[2], ARGV[4], KEYS[1])
return 1
"""


class ScheduleNotFound(LookupError):
    """No schedule has this name."""


class ScheduleExists(ValueError):
    """A schedule with this name exists already (in the same project)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule {name!r} exists already")
        self.name = name


class ScheduleConflict(RuntimeError):
    """The schedule changed (or went) between reading and writing it; read it again."""


class AmbiguousSchedule(LookupError):
    """Several projects the caller reaches have a schedule of this name: give the project."""

    def __init__(self, name: str, projects: list[str | None]) -> None:
        listed = ", ".join(p or "(none)" for p in projects)
        super().__init__(f"several schedules are named {name!r} (projects {listed}); "
                         "give the project")
        self.name, self.projects = name, projects


@dataclass(frozen=True)
class Schedule:
    """A stored schedule: what it is (``spec``) and what happened to it."""

    spec: ScheduleSpec
    anchor: datetime | None  # RedBeat's last_run_at: the next fire is counted from it
    history: dict[str, str] = field(default_factory=dict)
    uptime: tuple[int, int] = (0, 0)  # fires due, fires on time
    revision: str = ""  # the stored definition, for compare-and-set updates
    error: str | None = None  # the stored definition could not be read (see _unreadable)
    id: str = ""  # the entry's id (key suffix), :func:`~k1.scheduling.entry.schedule_id`

    @property
    def name(self) -> str:
        return self.spec.name

    def next_runs(self, now: datetime | None = None, count: int = UPCOMING_COUNT
                  ) -> list[datetime]:
        """The next fire times in the schedule's zone; none while paused."""
        if not self.spec.enabled:
            return []
        now = now or datetime.now(UTC)
        return upcoming(self.spec.timing(), self.anchor, now, count, self.spec.timezone)

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        """The schedule for the API. One that cannot be computed (stored before today's
        bounds, or by hand) is described with an ``error`` instead of failing the list."""
        body = self.spec.to_json()
        due, on_time = self.uptime
        body.update(
            state="active" if self.spec.enabled else "paused",
            last_task_id=self.history.get("last_task_id") or None,
            last_status=self.history.get("last_status") or None,
            uptime={"due": due, "on_time": on_time,
                    "ratio": round(on_time / due, 6) if due else None},
        )
        error = self.error
        if error is None:
            try:
                body.update(self._computed(now))
                return body
            except (ArithmeticError, ValueError, KeyError) as exc:  # overflow, bad zone...
                error = f"{type(exc).__name__}: {exc}"
        body.update(self._computed(None, broken=True))
        body["error"] = (f"this schedule cannot be computed ({error}); change its timing "
                         "(PATCH) or delete it")
        return body

    def _computed(self, now: datetime | None, broken: bool = False) -> dict[str, Any]:
        """Description, next fire times and history times, in the schedule's zone (UTC
        and none of the derived values for a ``broken`` schedule)."""
        zone = "UTC" if broken else self.spec.timezone
        runs = [] if broken else self.next_runs(now)
        return {
            "description": None if broken else describe(self.spec.timing()),
            "next_run_at": runs[0].isoformat() if runs else None,
            "next_runs": [t.isoformat() for t in runs],
            **{name: _iso(self.history.get(name), zone)
               for name in ("last_run_at", "last_due_at", "last_finished_at")},
        }


class ScheduleStore:
    """K1 schedules in Redis, in RedBeat's layout (see :mod:`k1.scheduling.entry`)."""

    def __init__(self, app: Any = celery_app) -> None:
        self.app = app
        ensure_conf(app)
        self.redis = get_redis()
        self._save = self.redis.register_script(_SAVE)

    def known_tasks(self) -> TaskLookup:
        """Tasks a schedule may run (the public ones and the registered built-ins' tasks),
        with the platform's one check of their arguments."""
        return TaskLookup(frozenset(public_task_names()) | registered_builtin_tasks(self.app),
                          check_arguments)

    def validate(self, body: dict[str, Any]) -> ScheduleSpec:
        return ScheduleSpec.from_json(body, self.known_tasks())

    def create(self, spec: ScheduleSpec, *, exist_ok: bool = False) -> Schedule | None:
        """Save a new schedule; its first fire is the first fire time after now.

        ScheduleExists if the project has a schedule of this name (or None with
        ``exist_ok``); other projects' names do not count.
        """
        entry = K1Entry.from_spec(spec, self.app, last_run_at=datetime.now(UTC))
        if not self._write("create", entry, meta=True):
            if exist_ok:
                return None
            raise ScheduleExists(spec.name)
        return self.get(spec.name, spec.project_id)

    def replace(self, current: Schedule, spec: ScheduleSpec) -> Schedule:
        """Store ``spec`` in place of ``current`` (ScheduleConflict if it changed since).

        A new timing (cron, every, time zone) or a resume counts the next fire from now,
        so neither fires at once for times that passed under the old timing or the pause.
        """
        old = current.spec
        if spec.project_id != old.project_id:  # the project is part of the address
            raise InvalidSchedule("project_id", "cannot be changed; delete and create instead")
        restart = (spec.enabled and not old.enabled) or (
            (spec.cron, spec.every, spec.timezone) != (old.cron, old.every, old.timezone))
        anchor = datetime.now(UTC) if restart else current.anchor
        # Stored where it was (under its bare name if saved before per-project names).
        entry = K1Entry.from_spec(replace(spec, builtin=old.builtin), self.app, anchor,
                                  sid=current.id)
        if not self._write("replace", entry, meta=restart, expected=current.revision):
            raise ScheduleConflict(f"schedule {spec.name!r} changed or was deleted meanwhile; "
                                   "read it again")
        return self.get(spec.name, spec.project_id)

    def set_enabled(self, name: str, enabled: bool, project_id: str | None = None) -> Schedule:
        current = self.get(name, project_id)
        if current.spec.enabled == enabled:
            return current
        return self.replace(current, replace(current.spec, enabled=enabled))

    def pause(self, name: str, project_id: str | None = None) -> Schedule:
        return self.set_enabled(name, False, project_id)

    def resume(self, name: str, project_id: str | None = None) -> Schedule:
        return self.set_enabled(name, True, project_id)

    def delete(self, name: str, project_id: str | None = None) -> None:
        sid = self.get(name, project_id).id
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.app.redbeat_conf.schedule_key, entry_key(sid))
        pipe.delete(entry_key(sid))
        history.forget(pipe, sid)
        if not pipe.execute()[1]:
            raise ScheduleNotFound(f"no schedule named {name!r}")

    def get(self, name: str, project_id: str | None = None) -> Schedule:
        """Schedule ``name`` of ``project_id``; without a project, the one schedule of that
        name in any project (:class:`AmbiguousSchedule` if several)."""
        return self.find(name, None if project_id is None else [project_id])

    def find(self, name: str, projects: Collection[str] | None) -> Schedule:
        """The one schedule named ``name`` among those of ``projects`` (None: all, and the
        project-less ones, which then come first: a built-in is addressed by its name alone):
        ScheduleNotFound if none, AmbiguousSchedule if several."""
        sids = {name} | ({schedule_id(p, name) for p in projects} if projects is not None
                         else set(self._ids_named(name)))
        found = [s for s in self._load(sorted(sids))
                 if projects is None or s.spec.project_id in projects]
        projectless = [s for s in found if s.spec.project_id is None]
        if projectless:
            return projectless[0]
        if not found:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        if len(found) > 1:
            raise AmbiguousSchedule(name, sorted((s.spec.project_id for s in found),
                                                 key=lambda p: p or ""))
        return found[0]

    def list(self) -> list[Schedule]:
        """Every schedule, by name and project."""
        prefix = len(entry_key(""))
        keys = self.redis.zrange(self.app.redbeat_conf.schedule_key, 0, -1)
        return sorted(self._load([key[prefix:] for key in keys]),
                      key=lambda s: (s.name, s.spec.project_id or ""))

    def _ids_named(self, name: str) -> builtins.list[str]:
        """Ids of the project schedules named ``name`` (an operator's lookup: a scan)."""
        prefix = len(entry_key(""))
        scan = self.redis.zscan_iter(self.app.redbeat_conf.schedule_key,
                                     match=entry_key(f"*:{name}"), count=1000)
        return [key[prefix:] for key, _score in scan if name_of(key[prefix:]) == name]

    def _load(self, sids: builtins.list[str]) -> builtins.list[Schedule]:
        """The schedules stored under ``sids`` (missing ones left out), with uptime."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(entry_key(sid))
        stored = [(sid, fields) for sid, fields in zip(sids, pipe.execute(), strict=True)
                  if fields.get("definition")]
        counts = history.uptime([sid for sid, _ in stored])
        return [self._schedule(sid, fields, counts[sid]) for sid, fields in stored]

    def run_now(self, schedule: Schedule, user_id: str | None = None) -> str:
        """Send the schedule's task now, outside its timing; returns the task id.

        Counts as the schedule's last run (history) but not as a fire of its timing.
        """
        spec = schedule.spec
        headers = {k1_headers.SCHEDULE: schedule.id}
        if spec.project_id is not None and spec.task in public_task_names():
            task_id = submit(spec.task, spec.args, spec.call_kwargs(), project_id=spec.project_id,
                             user_id=user_id, headers=headers)
        else:  # a project-less built-in: operators only (checked at the edge)
            task_id = send(spec.task, spec.args, spec.call_kwargs(), project_id=spec.project_id,
                           user_id=user_id, headers=headers)
        history.record_run(schedule.id, task_id)
        return task_id

    def _write(self, mode: str, entry: K1Entry, *, meta: bool, expected: str = "") -> bool:
        return bool(self._save(
            keys=[entry.key, self.app.redbeat_conf.schedule_key, entry_key(entry.spec_name)],
            args=[mode, entry.definition(), entry.encoded_meta() if meta else "", entry.score,
                  expected, entry.project_id or ""],
        ))

    def _schedule(self, sid: str, fields: dict[str, str], uptime: tuple[int, int] = (0, 0)
                  ) -> Schedule:
        history_fields = {k: fields[k] for k in HISTORY_FIELDS if fields.get(k)}
        try:
            entry = entry_from_fields(fields, self.app)
            spec, anchor, error = entry.spec(), entry.last_run_at, None
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            spec, anchor, error = _unreadable(sid, fields["definition"]), None, exc
        return Schedule(spec=spec, anchor=anchor, history=history_fields, uptime=uptime,
                        revision=fields["definition"], id=sid,
                        error=None if error is None else f"{type(error).__name__}: {error}")


def _unreadable(sid: str, definition: str) -> ScheduleSpec:
    """What can be read of a definition K1Entry cannot decode: its name and project from
    its id, its task and state when it is still a JSON object."""
    try:
        fields = json.loads(definition)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        fields = {}

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    project, _, name = sid.rpartition(":")
    return ScheduleSpec(name=name, task=text("task") or "",
                        project_id=project or text("project_id"),
                        enabled=fields.get("enabled") is not False,
                        builtin=fields.get("builtin") is True)


def _iso(epoch: str | None, zone: str) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), ZoneInfo(zone)).isoformat()
