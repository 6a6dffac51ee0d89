"""The K1 Celery app: ``celery -A k1.celery worker``.

Configured from ``celeryconfig.py`` at the repository root (installed beside the
package), which reads :mod:`k1.settings`.
"""

import functools
import logging
from typing import Any

from celery import Celery, signals
from celery.backends.redis import RedisBackend

from k1 import events

app = Celery("k1")
app.config_from_object("celeryconfig")


@functools.cache
def load_task_modules() -> None:
    """Import ``celeryconfig.imports`` once, so that every K1 task is registered here too.

    A worker does it when it starts; the web process, the CLI and beat call this before
    they look tasks up by name.
    """
    app.loader.import_default_modules()


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, whose writes carry this process's buffered events.

    Every result write (a task's STARTED, SUCCESS, FAILURE...) is one pipelined round
    trip already; the task history records and events this process has buffered ride in
    it (:func:`k1.events.send_with`). A worker's pool process writes STARTED right after
    it captured the task's ``received`` and ``started`` records, and the next task's
    STARTED carries the last one's ``succeeded``: at load the event flusher seldom needs
    a round trip of its own. A failed write fails as Celery's does (and is retried the
    same way); the records are then kept as after any failed publish.
    """

    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        # Celery's RedisBackend._set (5.7; SET EX for redis-py 8's deprecated SETEX),
        # executed through the event publisher.
        if expires is None:
            expires = self.expires
        with self.client.pipeline() as pipe:
            pipe.set(key, value, ex=expires or None)
            pipe.publish(key, value)
            events.send_with(pipe)


# "<backend class>+<url>" keeps the configured URL (TLS options and all).
app.backend_cls = f"{__name__}:ResultBackend+{app.conf.result_backend}"


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
    app.backend_cls = f"{__name__}:RequestResultBackend+{app.conf.result_backend}"


@signals.setup_logging.connect
def _structured_logs(loglevel: str | int | None = None, **_: object) -> None:
    from k1.logs import configure_logging

    configure_logging(logging.getLevelName(loglevel) if isinstance(loglevel, int) else
                      (loglevel or "INFO"))
