"""The K1 Celery app: ``celery -A k1.celery worker``.

Configured from ``celeryconfig.py`` at the repository root (installed beside the
package), which reads :mod:`k1.settings`.
"""

import functools
import logging

from celery import Celery, signals

app = Celery("k1")
app.config_from_object("celeryconfig")


@functools.cache
def load_task_modules() -> None:
    """Import ``celeryconfig.imports`` once, so that every K1 task is registered here too.

    A worker does it when it starts; the web process, the CLI and beat call this before
    they look tasks up by name.
    """
    app.loader.import_default_modules()


@signals.setup_logging.connect
def _structured_logs(loglevel: str | int | None = None, **_: object) -> None:
    from k1.logs import configure_logging

    configure_logging(logging.getLevelName(loglevel) if isinstance(loglevel, int) else
                      (loglevel or "INFO"))
