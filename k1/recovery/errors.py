"""What a failure means: retry it, defer it, or let it die.

The classification is one ordered table of ``(exception type, verdict)`` rows; the first
row whose type matches wins. A verdict is a :class:`Kind` or a function of the exception
returning one (HTTP errors depend on their status). A task extends the table with its
own rows, which are consulted first::

    @app.task(base=K1Task, error_classes=((PaymentDeclined, Kind.DEAD),))
    def charge(...): ...

=====================================  =========  ===========================================
exception                              kind       why
=====================================  =========  ===========================================
NonRetryableError                      DEAD       declared permanent by the task
TransientError                         RETRY      declared transient by the task
pybreaker.CircuitBreakerError          DEFER      the dependency is known to be down: wait
requests.HTTPError 429 / 5xx           RETRY      the server is overloaded or broken for now
requests.HTTPError other 4xx           DEAD       the request itself is wrong
SoftTimeLimitExceeded,                 DEAD       the run outlived its time limit: the same
TimeLimitExceeded                                 work would again, so retrying multiplies
                                                  the load the limit exists to bound; the
                                                  letter lets an operator replay it (after
                                                  raising the task's limit, say)
requests ConnectionError, Timeout      RETRY      network blip
ConnectionError, TimeoutError          RETRY      network blip
redis ConnectionError / TimeoutError   RETRY      Redis restarting
sqlalchemy OperationalError            RETRY      database unreachable
ValueError, TypeError, LookupError,    DEAD       bad input or a bug: retrying cannot help
AttributeError, NotImplementedError
anything else                          RETRY      unknown: retried, bounded by the policy
=====================================  =========  ===========================================
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pybreaker
import redis.exceptions
import requests
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded


class Kind(enum.Enum):
    RETRY = "retry"  # transient: try again after a backoff
    DEFER = "defer"  # a breaker is open: wait for it without spending the retry budget
    DEAD = "dead"  # non-transient: straight to the dead-letter queue


class TransientError(Exception):
    """Raise to say: this failure is temporary, retry me."""


class NonRetryableError(Exception):
    """Raise to say: retrying cannot help, dead-letter me now."""


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    retry_after: float | None = None  # seconds the failing side asked us to wait


Rule = Kind | Callable[[BaseException], Kind]
ErrorTable = Iterable[tuple[type[BaseException], Rule]]


def is_transient_status(status: int | None) -> bool:
    """The one rule for HTTP answers: 429 and 5xx (and no status at all) say "try again
    later"; any other 4xx says the request itself is wrong, so repeating it cannot help
    (and must not count against the dependency's breaker).
    """
    return status is None or status == 429 or status >= 500


def _http_error_kind(exc: BaseException) -> Kind:
    return Kind.RETRY if is_transient_status(status_of(exc)) else Kind.DEAD


DEFAULT_ERROR_TABLE: tuple[tuple[type[BaseException], Rule], ...] = (
    (NonRetryableError, Kind.DEAD),
    (TransientError, Kind.RETRY),
    (pybreaker.CircuitBreakerError, Kind.DEFER),
    (requests.HTTPError, _http_error_kind),
    (SoftTimeLimitExceeded, Kind.DEAD),
    (TimeLimitExceeded, Kind.DEAD),
    (requests.ConnectionError, Kind.RETRY),
    (requests.Timeout, Kind.RETRY),
    (ConnectionError, Kind.RETRY),
    (TimeoutError, Kind.RETRY),
    (redis.exceptions.ConnectionError, Kind.RETRY),
    (redis.exceptions.TimeoutError, Kind.RETRY),
    (sqlalchemy.exc.OperationalError, Kind.RETRY),
    (ValueError, Kind.DEAD),
    (TypeError, Kind.DEAD),
    (LookupError, Kind.DEAD),
    (AttributeError, Kind.DEAD),
    (NotImplementedError, Kind.DEAD),
)


def classify(exc: BaseException, extra: ErrorTable = ()) -> Verdict:
    """The verdict for ``exc``: the task's own rows first, then the default table."""
    for exc_type, rule in (*tuple(extra), *DEFAULT_ERROR_TABLE):
        if isinstance(exc, exc_type):
            kind = rule if isinstance(rule, Kind) else rule(exc)
            return Verdict(kind, retry_after=retry_after_of(exc))
    return Verdict(Kind.RETRY, retry_after=retry_after_of(exc))


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds the failing side asked us to wait: an error's own ``retry_after`` (an open
    breaker's time to half-open) or an HTTP ``Retry-After`` header (delta or date).
    """
    own = getattr(exc, "retry_after", None)
    if isinstance(own, int | float):
        return float(own)
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, math.ceil(seconds))


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of an error that carries a response (``requests``), else None."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)
