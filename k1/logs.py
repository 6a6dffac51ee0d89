"""Structured logs (structlog) for every K1 process: ``key=value`` lines on stderr.

stdlib ``logging`` records (Flask, Celery, K1 modules) go through the same renderer, so a
line reads the same whichever library wrote it.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import Processor

from k1.settings import redis_error_fix

_SHARED_PROCESSORS: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO") -> None:
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )
    )
    handler.addFilter(_add_configuration_fix)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _add_configuration_fix(record: logging.LogRecord) -> bool:
    """Append the setting that fixes a Redis error to its log line (Celery and kombu log
    reconnect attempts without saying that K1_REDIS_SSL_CERT_REQS exists)."""
    message = record.getMessage()
    fix = redis_error_fix(message) or (
        redis_error_fix(str(record.exc_info[1])) if record.exc_info else None)
    if fix and fix not in message:
        record.msg, record.args = f"{message} (fix: {fix})", None
    return True
