"""Process-wide Redis client, built once from the settings.

``get_redis()`` returns a client with short timeouts so that a dead Redis fails fast
instead of hanging a request or a task.
"""

from __future__ import annotations

import functools

import redis

from k1.settings import get_settings

REDIS_SOCKET_TIMEOUT = 5.0  # seconds; a healthy Redis answers in well under a millisecond


@functools.cache
def get_redis() -> redis.Redis:
    return redis_from_url(get_settings().redis_url)


def redis_from_url(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        decode_responses=True,
    )
