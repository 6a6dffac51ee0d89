"""The dead-letter queue: what failed for good, kept in PostgreSQL for forensics and replay.

- :mod:`.models`: the ``dead_letters`` and ``dlq_depth_snapshots`` tables.
- :mod:`.store`: :class:`~.store.DeadLetterStore`: record (spooled in Redis while the
  database is down), query, stats, replay, discard, purge, retention.
- :mod:`.tasks`: the periodic tasks (spool drain, retention, depth snapshot).
"""
