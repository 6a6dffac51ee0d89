"""What a schedule is, checked: :class:`ScheduleSpec` and :class:`InvalidSchedule`.

    tasks = TaskLookup(names, check_arguments)          # ScheduleStore.known_tasks()
    spec = ScheduleSpec.from_json({"name": "nightly", "task": "k1.tasks.demo.flaky",
                                   "cron": "0 2 * * *", "project_id": "acme"}, tasks)
    spec = spec.patched({"every": 30}, tasks)    # cron is dropped, all re-checked

Every field is checked before anything is written; the first problem found is raised
as an :class:`InvalidSchedule` that names the field. The validator is handed the tasks a
schedule may run and the check of their arguments (:class:`TaskLookup`); it does not
reach into the Celery app.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import schedule as Interval

from k1.scheduling.timing import Cron, interval, parse_cron
from k1.tasks.submissions import SubmissionError, validate_project_id

FIELDS = ("name", "task", "cron", "every", "args", "kwargs", "enabled", "timezone",
          "project_id", "catch_up")
CATCH_UP = ("once", "skip")  # after downtime: fire once on return, or skip what was missed
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # no ':' - names become Redis keys
MIN_EVERY = 1  # s; beat looks at the schedule about once a second, finer would not hold
# s (366 days): rarer than yearly is a cron expression's job, and five fire times past
# this still fit a datetime, where an unbounded interval overflowed the schedule list.
MAX_EVERY = 366 * 86400


# check(task_name, args, kwargs): raises a ValueError saying what does not match
# (k1.tasks.submissions.check_arguments).
ArgumentCheck = Callable[[str, Sequence[Any], Mapping[str, Any]], None]


@dataclass(frozen=True)
class TaskLookup(Collection[str]):
    """The tasks a schedule may run (``in``, iteration) and the check of their arguments."""

    names: frozenset[str]
    check_arguments: ArgumentCheck

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


class InvalidSchedule(ValueError):
    """A field of a schedule is wrong: ``field`` names it, the message says how."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    task: str
    cron: str | None = None
    every: float | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    timezone: str = "UTC"
    project_id: str | None = None
    catch_up: str = "once"
    builtin: bool = False  # defined in code (k1.scheduling.builtins); operators only

    @classmethod
    def from_json(cls, body: Mapping[str, Any], known_tasks: TaskLookup) -> ScheduleSpec:
        """A spec from an API/CLI body; InvalidSchedule on the first problem."""
        _no_unknown_fields(body)
        if "name" not in body:
            raise InvalidSchedule("name", "required")
        spec = cls(**{k: v for k, v in body.items() if v is not None or k in ("cron", "every")})
        return spec.checked(known_tasks)

    def patched(self, changes: Mapping[str, Any], known_tasks: TaskLookup) -> ScheduleSpec:
        """This spec with ``changes`` applied and everything checked again.

        Giving ``cron`` drops ``every`` and the other way round; the name and the project
        address the schedule and do not change.
        """
        _no_unknown_fields(changes)
        if "name" in changes and changes["name"] != self.name:
            raise InvalidSchedule("name", "cannot be changed; delete and create instead")
        merged = dict(changes)
        if merged.get("cron") is not None and "every" not in merged:
            merged["every"] = None
        if merged.get("every") is not None and "cron" not in merged:
            merged["cron"] = None
        patched = replace(self, **merged).checked(known_tasks)
        if patched.project_id != self.project_id:  # names are scoped per project
            raise InvalidSchedule("project_id", "cannot be changed; delete and create instead")
        return patched

    def checked(self, known_tasks: TaskLookup) -> ScheduleSpec:
        if not isinstance(self.name, str) or not NAME.fullmatch(self.name):
            raise InvalidSchedule(
                "name", f"{self.name!r} must be 1-100 letters, digits, '_', '.' or '-', "
                        "starting with a letter or digit")
        timezone = _timezone(self.timezone)
        cron, every = self.cron, self.every
        if (cron is None) == (every is None):
            raise InvalidSchedule(
                "cron, every", "give exactly one: cron (a 5-field cron expression) or every "
                               f"(seconds); got {'both' if cron is not None else 'neither'}")
        if cron is not None:
            if not isinstance(cron, str):
                raise InvalidSchedule("cron", f"must be a string, got {type(cron).__name__}")
            try:
                cron = parse_cron(cron, timezone).expr
            except ValueError as exc:
                raise InvalidSchedule("cron", f"invalid cron expression {cron!r}: {exc}") from None
        else:
            every = _every(every)
        if not isinstance(self.args, list):
            raise InvalidSchedule("args", f"must be a JSON list, got {_json_type(self.args)}")
        if not isinstance(self.kwargs, dict):
            raise InvalidSchedule("kwargs",
                                  f"must be a JSON object, got {_json_type(self.kwargs)}")
        if not isinstance(self.enabled, bool):
            raise InvalidSchedule("enabled", f"must be true or false, got {self.enabled!r}")
        if self.catch_up not in CATCH_UP:
            raise InvalidSchedule("catch_up",
                                  f"must be one of {', '.join(CATCH_UP)}, got {self.catch_up!r}")
        project_id = _project_id(self.project_id)
        spec = replace(self, cron=cron, every=every, timezone=timezone, project_id=project_id)
        spec._check_task(known_tasks)
        return spec

    def _check_task(self, known_tasks: TaskLookup) -> None:
        if not isinstance(self.task, str) or not self.task:
            raise InvalidSchedule("task", "required, the name of a registered task")
        if self.task not in known_tasks:
            known = ", ".join(sorted(known_tasks))
            raise InvalidSchedule("task", f"unknown task {self.task!r}; known tasks: {known}")
        kwargs = self.call_kwargs()
        if self.project_id is not None and kwargs["project_id"] != self.project_id:
            raise InvalidSchedule("kwargs", f"kwargs.project_id {kwargs['project_id']!r} "
                                            f"differs from project_id {self.project_id!r}")
        try:
            known_tasks.check_arguments(self.task, self.args, kwargs)
        except ValueError as exc:
            if "project_id" not in kwargs and _binds(known_tasks, self.task, self.args,
                                                      {**kwargs, "project_id": "p"}):
                raise InvalidSchedule("project_id",
                                      f"required: {self.task} runs for a project") from None
            raise InvalidSchedule("args, kwargs", str(exc)) from None

    def call_kwargs(self) -> dict[str, Any]:
        """The kwargs the task is called with: ``project_id`` is passed as a keyword."""
        if self.project_id is None:
            return dict(self.kwargs)
        return {"project_id": self.project_id, **self.kwargs}

    def timing(self) -> Cron | Interval:
        if self.cron is not None:
            return Cron(self.cron, self.timezone)
        assert self.every is not None
        return interval(self.every)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _binds(tasks: TaskLookup, task: str, args: Sequence[Any], kwargs: Mapping[str, Any]
           ) -> bool:
    try:
        tasks.check_arguments(task, args, kwargs)
    except ValueError:
        return False
    return True


def _no_unknown_fields(body: Mapping[str, Any]) -> None:
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidSchedule(", ".join(unknown),
                              f"unknown field(s); known fields: {', '.join(FIELDS)}")


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSchedule("timezone", f"must be an IANA time zone name, got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule("timezone", f"unknown time zone {value!r} "
                                          "(use an IANA name such as 'Europe/Paris')") from None
    return value


def _every(value: Any) -> float | int:
    # Compared as numbers before any float(): an integer of 400 digits has no float.
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and math.isnan(value)):
        raise InvalidSchedule("every", f"must be a number of seconds, got {_short(value)}")
    if value <= 0:
        raise InvalidSchedule("every", f"must be positive, got {_short(value)}")
    if value < MIN_EVERY:
        raise InvalidSchedule("every", f"must be at least {MIN_EVERY} second, got {value}")
    if value > MAX_EVERY:
        raise InvalidSchedule("every", f"must be at most {MAX_EVERY} seconds (366 days; use "
                                       f"cron for rarer schedules), got {_short(value)}")
    return int(value) if float(value).is_integer() else value


def _short(value: Any) -> str:
    """``repr(value)`` cut to a readable length (a 400-digit integer is not an answer)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _project_id(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return validate_project_id(value)
    except SubmissionError as exc:
        raise InvalidSchedule("project_id", str(exc).removeprefix("project_id: ")) from None


def _json_type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")
