"""The K1 Celery app: ``celery -A k1.celery worker``.

Configured from ``celeryconfig.py`` at the repository root (installed beside the
package), which reads :mod:`k1.settings`.
"""

import functools
import logging
from typing import Any

from celery import Celery, signals
from celery.backends.redis import RedisBackend

app = Celery("k1")
app.config_from_object("celeryconfig")


@functools.cache
def load_task_modules() -> None:
    """Import ``celeryconfig.imports`` once, so that every K1 task is registered here too.

    A worker does it when it starts; the web process, the CLI and beat call this before
    they look tasks up by name.
    """
    app.loader.import_default_modules()


class RequestResultBackend(RedisBackend):
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
    # "<backend class>+<url>" keeps the configured URL (TLS options and all).
    app.backend_cls = f"{__name__}:RequestResultBackend+{app.conf.result_backend}"


@signals.setup_logging.connect
def _structured_logs(loglevel: str | int | None = None, **_: object) -> None:
    from k1.logs import configure_logging

    configure_logging(logging.getLevelName(loglevel) if isinstance(loglevel, int) else
                      (loglevel or "INFO"))
