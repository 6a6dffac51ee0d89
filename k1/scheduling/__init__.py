"""Dynamic schedules on Celery beat with RedBeat: validate, save, list, pause, run now.

    from k1.scheduling import ScheduleStore
    store = ScheduleStore()
    spec = store.validate({"name": "nightly-report", "task": "k1.tasks.analyze_profile",
                           "cron": "0 2 * * *", "timezone": "Europe/Paris",
                           "kwargs": {"data_path": "s3://b/p.csv"}, "project_id": "acme"})
    store.create(spec)          # the running beat fires it from its next loop

One module per concern: :mod:`~k1.scheduling.timing` (cron in a time zone, intervals),
:mod:`~k1.scheduling.spec` (what a schedule is, checked), :mod:`~k1.scheduling.entry`
(its RedBeat form), :mod:`~k1.scheduling.store` (create/update/delete/list/pause/run),
:mod:`~k1.scheduling.beat` (the scheduler's fire hook), :mod:`~k1.scheduling.history`
(fires, outcomes, uptime counters), :mod:`~k1.scheduling.builtins` (housekeeping
schedules), :mod:`~k1.scheduling.supervisor` (``k1 beat``). See docs/scheduling.md.
"""

from k1.scheduling.spec import InvalidSchedule, ScheduleSpec
from k1.scheduling.store import (
    AmbiguousSchedule,
    Schedule,
    ScheduleConflict,
    ScheduleExists,
    ScheduleNotFound,
    ScheduleStore,
)

__all__ = ["AmbiguousSchedule", "InvalidSchedule", "Schedule", "ScheduleConflict", "ScheduleExists",
           "ScheduleNotFound", "ScheduleSpec", "ScheduleStore"]
