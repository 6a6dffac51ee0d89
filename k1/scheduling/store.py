"""The schedule store: K1 schedules kept as RedBeat entries, checked before written.

    store = ScheduleStore()
    spec = store.validate({"name": "nightly", "task": "k1.tasks.demo.flaky",
                           "cron": "0 2 * * *", "timezone": "Europe/Paris",
                           "project_id": "acme"})            # InvalidSchedule
    schedule = store.create(spec)                           # ScheduleExists
    store.replace(schedule, schedule.spec.patched({"every": 60}, store.known_tasks()))
    store.pause("nightly"); store.resume("nightly"); store.delete("nightly")
    task_id = store.run_now(store.get("nightly"), user_id="ada")

Each write is one atomic Redis script: a schedule is saved whole or not at all, an update
applies only to the version it was computed from (else :class:`ScheduleConflict`), and a
running beat sees it on its next loop (``K1_BEAT_MAX_LOOP_INTERVAL``), with no restart.
"""

from __future__ import annotations

import json
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
from k1.scheduling.entry import K1Entry, entry_from_fields, entry_key
from k1.scheduling.spec import ScheduleSpec
from k1.scheduling.timing import describe, upcoming
from k1.tasks import public_task_names

UPCOMING_COUNT = 5  # fire times listed per schedule
HISTORY_FIELDS = ("last_run_at", "last_due_at", "last_task_id", "last_status", "last_finished_at")

# KEYS: entry, RedBeat's sorted set. ARGV: mode ('create' | 'replace'), definition, meta
# ('' keeps it), score, expected definition (replace only).
_SAVE = """
if ARGV[1] == 'create' then
  if redis.call('exists', KEYS[1]) == 1 then return 0 end
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
    """A schedule with this name exists already."""


class ScheduleConflict(RuntimeError):
    """The schedule changed (or went) between reading and writing it; read it again."""


@dataclass(frozen=True)
class Schedule:
    """A stored schedule: what it is (``spec``) and what happened to it."""

    spec: ScheduleSpec
    anchor: datetime | None  # RedBeat's last_run_at: the next fire is counted from it
    history: dict[str, str] = field(default_factory=dict)
    uptime: tuple[int, int] = (0, 0)  # fires due, fires on time
    revision: str = ""  # the stored definition, for compare-and-set updates
    error: str | None = None  # the stored definition could not be read (see _unreadable)

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

    def known_tasks(self) -> set[str]:
        """Tasks a schedule may run: the public ones and the registered built-ins' tasks."""
        return set(public_task_names()) | registered_builtin_tasks(self.app)

    def validate(self, body: dict[str, Any]) -> ScheduleSpec:
        return ScheduleSpec.from_json(body, self.known_tasks())

    def create(self, spec: ScheduleSpec, *, exist_ok: bool = False) -> Schedule | None:
        """Save a new schedule; its first fire is the first fire time after now.

        ScheduleExists if the name is taken (or None with ``exist_ok``).
        """
        entry = K1Entry.from_spec(spec, self.app, last_run_at=datetime.now(UTC))
        if not self._write("create", entry, meta=True):
            if exist_ok:
                return None
            raise ScheduleExists(f"schedule {spec.name!r} exists already")
        return self.get(spec.name)

    def replace(self, current: Schedule, spec: ScheduleSpec) -> Schedule:
        """Store ``spec`` in place of ``current`` (ScheduleConflict if it changed since).

        A new timing (cron, every, time zone) or a resume counts the next fire from now,
        so neither fires at once for times that passed under the old timing or the pause.
        """
        old = current.spec
        restart = (spec.enabled and not old.enabled) or (
            (spec.cron, spec.every, spec.timezone) != (old.cron, old.every, old.timezone))
        anchor = datetime.now(UTC) if restart else current.anchor
        entry = K1Entry.from_spec(replace(spec, builtin=old.builtin), self.app, anchor)
        if not self._write("replace", entry, meta=restart, expected=current.revision):
            raise ScheduleConflict(f"schedule {spec.name!r} changed or was deleted meanwhile; "
                                   "read it again")
        return self.get(spec.name)

    def set_enabled(self, name: str, enabled: bool) -> Schedule:
        current = self.get(name)
        if current.spec.enabled == enabled:
            return current
        return self.replace(current, replace(current.spec, enabled=enabled))

    def pause(self, name: str) -> Schedule:
        return self.set_enabled(name, False)

    def resume(self, name: str) -> Schedule:
        return self.set_enabled(name, True)

    def delete(self, name: str) -> None:
        key = entry_key(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.app.redbeat_conf.schedule_key, key)
        pipe.delete(key)
        history.forget(pipe, name)
        if not pipe.execute()[1]:
            raise ScheduleNotFound(f"no schedule named {name!r}")

    def get(self, name: str) -> Schedule:
        fields = self.redis.hgetall(entry_key(name))
        if not fields.get("definition"):
            raise ScheduleNotFound(f"no schedule named {name!r}")
        return self._schedule(name, fields, history.uptime([name])[name])

    def list(self) -> list[Schedule]:
        """Every schedule, by name."""
        keys = self.redis.zrange(self.app.redbeat_conf.schedule_key, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        prefix = len(entry_key(""))
        schedules = [self._schedule(key[prefix:], fields)
                     for key, fields in zip(keys, pipe.execute(), strict=True)
                     if fields.get("definition")]
        counts = history.uptime([s.name for s in schedules])
        return sorted((replace(s, uptime=counts[s.name]) for s in schedules),
                      key=lambda s: s.name)

    def run_now(self, schedule: Schedule, user_id: str | None = None) -> str:
        """Send the schedule's task now, outside its timing; returns the task id.

        Counts as the schedule's last run (history) but not as a fire of its timing.
        """
        from k1.tasks.submissions import submit

        spec = schedule.spec
        headers = {k1_headers.SCHEDULE: spec.name}
        if spec.project_id is not None and spec.task in public_task_names():
            task_id = submit(spec.task, spec.args, spec.call_kwargs(), project_id=spec.project_id,
                             user_id=user_id, headers=headers)
        else:  # a project-less built-in: operators only (checked at the edge)
            task = self.app.tasks[spec.task]
            task_id = task.apply_async(spec.args, spec.call_kwargs(),
                                       headers={**headers, k1_headers.USER: user_id}).id
        history.record_run(spec.name, task_id)
        return task_id

    def _write(self, mode: str, entry: K1Entry, *, meta: bool, expected: str = "") -> bool:
        return bool(self._save(
            keys=[entry.key, self.app.redbeat_conf.schedule_key],
            args=[mode, entry.definition(), entry.encoded_meta() if meta else "", entry.score,
                  expected],
        ))

    def _schedule(self, name: str, fields: dict[str, str], uptime: tuple[int, int] = (0, 0)
                  ) -> Schedule:
        history_fields = {k: fields[k] for k in HISTORY_FIELDS if fields.get(k)}
        try:
            entry = entry_from_fields(fields, self.app)
            spec, anchor, error = entry.spec(), entry.last_run_at, None
        except (ValueError, TypeError, KeyError, ArithmeticError) as exc:
            spec, anchor, error = _unreadable(name, fields["definition"]), None, exc
        return Schedule(spec=spec, anchor=anchor, history=history_fields, uptime=uptime,
                        revision=fields["definition"],
                        error=None if error is None else f"{type(error).__name__}: {error}")


def _unreadable(name: str, definition: str) -> ScheduleSpec:
    """What can be read of a definition K1Entry cannot decode: its task, project and state
    when it is still a JSON object (so its project sees it), else its name alone."""
    try:
        fields = json.loads(definition)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        fields = {}

    def text(key: str) -> str | None:
        value = fields.get(key)
        return value if isinstance(value, str) else None

    return ScheduleSpec(name=name, task=text("task") or "", project_id=text("project_id"),
                        enabled=fields.get("enabled") is not False,
                        builtin=fields.get("builtin") is True)


def _iso(epoch: str | None, zone: str) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(float(epoch), ZoneInfo(zone)).isoformat()
