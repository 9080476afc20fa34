"""Redis clients that survive a Redis restart: a command on a connection the restart closed is
retried on a fresh one (briefly, with backoff) instead of failing the request that used it."""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

_RETRY_ON = [ConnectionError, TimeoutError]


def _options(socket_timeout: float | None) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry_on_error": _RETRY_ON,
    }


def connect(url: str, socket_timeout: float | None = 10) -> redis.Redis:
    return redis.Redis.from_url(
        url, retry=redis.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), 3), **_options(socket_timeout)
    )


def connect_async(url: str, socket_timeout: float | None = 10) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(
        url, retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), 3), **_options(socket_timeout)
    )
