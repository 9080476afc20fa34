"""Redis clients that survive a Redis restart: a command on a connection the restart closed is
retried on a fresh one (briefly, with backoff) instead of failing the request that used it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
import redis.asyncio
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.exceptions import ConnectionError, TimeoutError, WatchError
from redis.typing import ZSetRangeResponse

_RETRY_ON = [ConnectionError, TimeoutError]
# A create whose new keys were touched between its check and its write (or whose connection dropped
# while it watched them) is checked again, this many times in all.
_CREATE_TRIES = 5


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


# The event loop's pool: commands are short (nothing waits on a connection: pub/sub waits share one),
# so a burst of requests beyond this many at once queues for a connection instead of failing.
ASYNC_POOL_SIZE = 100
ASYNC_POOL_WAIT_S = 10.0


def connect_async(url: str, socket_timeout: float | None = 10) -> redis.asyncio.Redis:
    """An asyncio client whose pool makes a command wait (up to ``ASYNC_POOL_WAIT_S``) for a free
    connection rather than fail with "Too many connections" when a burst takes them all."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=ASYNC_POOL_SIZE,
        timeout=ASYNC_POOL_WAIT_S,
        retry=redis.asyncio.retry.Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        **_options(socket_timeout),
    )
    return redis.asyncio.Redis.from_pool(pool)


def as_text(reply: bytes | str) -> str:
    """A Redis reply as text. Kiln's clients return bytes (none sets ``decode_responses``); redis-py
    types replies for both settings, as ``bytes | str``."""
    return reply.decode() if isinstance(reply, bytes) else reply


def range_members(reply: ZSetRangeResponse) -> list[str]:
    """The members of a sorted-set range read without scores, as text."""
    # redis-py's reply type also covers ranges read WITHSCORES (member, score pairs); these never are.
    return [as_text(member) for member in cast("list[bytes | str]", reply)]


def newest_first_page(
    client: redis.Redis, index: str, *, before: str | None, after: str | None, limit: int
) -> tuple[list[str], bool]:
    """A page of an index of ids (a sorted set, all scores 0, ids sorting by creation time), newest
    first. ``before``/``after`` are ids bounding the page (exclusive). Returns the page and whether
    more exist beyond it in the direction of travel."""
    if after is not None:
        ids = client.zrangebylex(index, f"({after}", "+", start=0, num=limit + 1)
        more = len(ids) > limit
        return [as_text(i) for i in reversed(ids[:limit])], more
    upper = f"({before}" if before is not None else "+"
    ids = client.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)
    return [as_text(i) for i in ids[:limit]], len(ids) > limit


class AlreadyStored(Exception):
    """A create found keys it was to make already stored, and wrote nothing."""

    def __init__(self, taken: Sequence[str]) -> None:
        super().__init__(f"{len(taken)} key(s) already stored, the first {taken[0]}")
        self.taken = list(taken)


def create_new(client: redis.Redis, new_keys: Sequence[str], fill: Callable[[Pipeline], None]) -> None:
    """Run the commands ``fill`` queues on a pipeline as one transaction, but only if none of
    ``new_keys`` exists: ``AlreadyStored`` (nothing written) otherwise. The keys are watched from the
    check to the write, so a key made in between fails the transaction too, never overwritten."""
    for tries_left in reversed(range(_CREATE_TRIES)):
        with client.pipeline(transaction=True) as pipe:
            if new_keys:
                pipe.watch(*new_keys)  # type: ignore[no-untyped-call]  # redis-py leaves watch untyped
                if pipe.exists(*new_keys):
                    raise AlreadyStored(_stored(client, new_keys))
                pipe.multi()
            fill(pipe)
            try:
                pipe.execute()
                return
            except WatchError:
                if not tries_left:
                    raise


def _stored(client: redis.Redis, candidates: Sequence[str]) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for key in candidates:
            pipe.exists(key)
        return [key for key, found in zip(candidates, pipe.execute(), strict=True) if found]
