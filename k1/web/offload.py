"""Blocking calls off the event loop.

psycopg 3 does not cooperate with eventlet: a query run on the hub blocks every socket.
``blocking(fn, ...)`` runs it in eventlet's thread pool when the process is
monkey-patched, and directly otherwise (threading mode, CLI, tests)::

    rows = blocking(store.list, filters)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def blocking(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    if _eventlet_patched():
        from eventlet import tpool

        return tpool.execute(fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _eventlet_patched() -> bool:
    try:
        from eventlet import patcher
    except ImportError:
        return False
    return patcher.is_monkey_patched("socket")
