"""A call bound to a task's signature: the one place K1 maps positional and keyword
arguments to parameter names (submission checks, argument limits, limit and unique keys).

    bound(task.run, (1,), {"flag": True})      # {"n": 1, "flag": True}
    bound(task.run, (1,), {}, defaults=True)   # f(1) and f(1, flag=False) bind the same
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def bound(run: Callable[..., Any], args: Sequence[Any] = (),
          kwargs: Mapping[str, Any] | None = None, *, defaults: bool = False
          ) -> dict[str, Any]:
    """The arguments of ``run(*args, **kwargs)`` by parameter name (``defaults``: with the
    defaults of those left out); TypeError, as the call itself would raise, if they do not
    fit the signature."""
    binding = _signature(run).bind(*args, **(kwargs or {}))
    if defaults:
        binding.apply_defaults()
    return dict(binding.arguments)


# Tasks are few and live as long as the process; inspecting a signature again for every
# call cost a no-op task ~4 % of its pool process's CPU.
SIGNATURES_CACHED = 1024


@functools.lru_cache(maxsize=SIGNATURES_CACHED)
def _cached_signature(run: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(run)


def _signature(run: Callable[..., Any]) -> inspect.Signature:
    try:
        return _cached_signature(run)
    except TypeError:  # unhashable: not cached
        return inspect.signature(run)
