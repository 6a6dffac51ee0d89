"""The dead-letter queue: what failed for good, kept in PostgreSQL for forensics and replay.

- :mod:`.store`: :class:`~.store.DeadLetterStore`, the façade the API, CLI and tasks use.
- :mod:`.models`: the ``dead_letters``, ``dlq_counts``, ``dlq_quarantine`` and
  ``dlq_depth_snapshots`` tables.
- :mod:`.storable`: a letter repaired so that the database accepts it.
- :mod:`.rows`: letters as rows (insert, page, discard, purge, retention).
- :mod:`.stats`: depth, splits, oldest death, daily average (from ``dlq_counts``).
- :mod:`.spool`: the Redis spool for database outages and its drain.
- :mod:`.quarantine`: letters the database refused even repaired.
- :mod:`.replay`: a letter's task sent again.
- :mod:`.filters`: which letters an operation is about.
- :mod:`.tasks`: the periodic tasks (spool drain, retention, depth snapshot).
"""
