"""The K1 Celery app: ``celery -A k1.celery worker``.

Configured from ``celeryconfig.py`` at the repository root (installed beside the
package), which reads :mod:`k1.settings`.
"""

import functools
import logging
from typing import Any

from celery import Celery, signals
from celery.app import backends
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from celery.utils.dispatch import Signal
from kombu.utils.encoding import bytes_to_str

from k1 import events


class App(Celery):
    """Celery, with K1's result backend class on the configured ``result_backend`` URL."""

    result_backend_class = f"{__name__}:ResultBackend"  # serve_requests() chooses another

    def _get_backend(self) -> Any:
        # "<backend class>+<url>" keeps the configured URL (TLS options and all); read
        # when the backend is first used, not at import (the settings may not be loaded).
        backend, url = backends.by_url(f"{self.result_backend_class}+{self.conf.result_backend}",
                                       self.loader)
        return backend(app=self, url=url)


app = App("k1")
app.config_from_object("celeryconfig")


@functools.cache
def load_task_modules() -> None:
    """Import ``celeryconfig.imports`` once, so that every K1 task is registered here too.

    A worker does it when it starts; the web process, the CLI and beat call this before
    they look tasks up by name.
    """
    app.loader.import_default_modules()


# A task's result, written unless the stored one is a success, and published as Celery's
# write does. Celery reads the stored result before every write for that check, in a
# round trip of its own; here the check is in the write, and atomic.
_STORE = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, meta = pcall(cjson.decode, stored)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

# Sent (sender: the backend; task_id, result, state, request) when a task's result is
# encoded and about to be written: what a receiver captures rides that write
# (k1.events.signals records a task's success so).
before_result_stored = Signal(name="before_result_stored",
                              providing_args={"task_id", "result", "state", "request"})


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, one round trip a write, carrying this process's
    buffered events.

    - **One round trip.** Celery's backend reads a task's stored result before each write
      (a success is never overwritten: a task delivered twice, after a lost worker, must
      not undo it), then writes: two round trips for each of a task's STARTED and
      SUCCESS. Here one script checks and writes (:data:`_STORE`), atomically.
    - **The events ride it.** The task history records and events this process has
      buffered go in the write's round trip (:func:`k1.events.send_with`). A worker's pool
      process writes STARTED right after it captured the task's ``received`` and
      ``started`` records, and its ``succeeded`` is captured just before the SUCCESS write
      (:data:`before_result_stored`): the event flusher seldom needs a round trip of its
      own. A failed write fails as Celery's does (and is retried the same way); the
      records are then kept as after any failed publish.
    """

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        # Celery's BaseKeyValueStoreBackend._store_result (5.7), without the read before
        # the write (the script checks).
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if before_result_stored.receivers:
            before_result_stored.send(sender=self, task_id=task_id, result=result,
                                      state=state, request=request)
        try:
            self._set_with_state(self.get_key_for_task(task_id), value, state)
        except BackendStoreError as exc:
            raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        return result

    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        if expires is None:
            expires = self.expires
        with self.client.pipeline(transaction=False) as pipe:
            pipe.eval(_STORE, 1, key, value, int(expires or 0))
            events.send_with(pipe)


class RequestResultBackend(ResultBackend):
    """The Redis result backend of a process that serves requests (the web process).

    Such a process sends tasks and reads their state, but never waits for a result; the
    stock backend subscribes to every sent task's result channel (for ``result.get()``)
    and unsubscribes when the ``AsyncResult`` is collected: two round trips per sent task
    and a pub/sub connection for nothing.
    """

    def on_task_call(self, producer: Any, task_id: str) -> dict[str, Any]:
        return {}


def serve_requests() -> None:
    """Configure this process's Celery app for serving requests; call before its first use.

    - One result backend (and so one connection pool) for the whole process: Celery keeps
      a backend per thread by default, and under eventlet every request is a green thread,
      so each request that read or sent a task opened new Redis connections (a TLS
      handshake on managed Redis).
    - No retry loop on result reads: workers retry a result write for about half a minute
      through a Redis restart (celeryconfig.py), but a request must answer 503 at once.
    """
    app.conf.update(result_backend_thread_safe=True, result_backend_always_retry=False)
    app.result_backend_class = f"{__name__}:RequestResultBackend"


@signals.setup_logging.connect
def _structured_logs(loglevel: str | int | None = None, **_: object) -> None:
    from k1.logs import configure_logging

    configure_logging(logging.getLevelName(loglevel) if isinstance(loglevel, int) else
                      (loglevel or "INFO"))
