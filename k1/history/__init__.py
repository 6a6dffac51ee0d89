"""Durable, searchable task history in the database.

- :mod:`k1.history.capture`: each task transition becomes a record on a Redis Stream
  (the signal handlers, submissions, K1Task's death and hand-back hooks), sent with the
  events (:mod:`k1.events`); :mod:`k1.history.stream`: the stream's key and format;
- :mod:`k1.history.recorder`: ``k1 history-recorder`` moves the records into the database
  in batches, idempotently, with a consumer group so that several may run;
- :mod:`k1.history.fold`: a task's records become its row and its attempts;
- :mod:`k1.history.store`: the batch write, the API's reads, retention;
- :mod:`k1.history.tasks`: ``k1.history.enforce_retention``, a built-in schedule.
"""
