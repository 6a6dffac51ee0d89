"""Blocking calls off the event loop.

psycopg 3 does not cooperate with eventlet: a query run on the hub blocks every socket.
``blocking(fn, ...)`` runs it in eventlet's thread pool when the process is
monkey-patched, and directly otherwise (threading mode, CLI, tests)::

    rows = blocking(store.list, filters)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def blocking(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)``, in eventlet's thread pool when the process is patched.

    The events ``fn`` publishes there are sent afterwards from the calling green thread:
    the publisher's locks and socket are green, and a pool thread that waits on a green
    lock held on the hub fails ("Cannot switch to a different thread") or hangs.
    """
    if not _eventlet_patched():
        return fn(*args, **kwargs)
    from eventlet import tpool

    from k1 import events

    collected: list[tuple[str, dict[str, Any]]] = []

    def run() -> R:
        with events.collecting(collected):
            return fn(*args, **kwargs)

    try:
        return tpool.execute(run)
    finally:
        if collected:
            events.publish(collected)


def _eventlet_patched() -> bool:
    try:
        from eventlet import patcher
    except ImportError:
        return False
    return patcher.is_monkey_patched("socket")
