"""Waiting for a prediction to change without holding a thread: Redis pub/sub on its event channel."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio

from api.errors import ProblemError
from shared import keys
from shared.status import Status

MAX_WAIT_S = 60
_WAIT = re.compile(r"^wait(?:=(\d+))?$")


def parse_prefer_wait(header: str | None, default_s: int) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (1-60) or a bare ``Prefer: wait`` (``default_s``); None when absent."""
    if not header:
        return None
    for preference in (p.strip() for p in header.split(",")):
        match = _WAIT.match(preference.replace(" ", ""))
        if match:
            seconds = int(match[1]) if match[1] else default_s
            if not 1 <= seconds <= MAX_WAIT_S:
                raise ProblemError(400, f"Prefer: wait must be between 1 and {MAX_WAIT_S} seconds, got {seconds}")
            return seconds
    return None


async def events(
    event_redis: redis.asyncio.Redis, prediction_id: str, timeout_s: float
) -> AsyncIterator[dict[str, Any] | None]:
    """Yield each event published for the prediction, and None at least once a second (to re-check
    state, so a missed message costs at most a second), until ``timeout_s`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with event_redis.pubsub() as pubsub:
        await pubsub.subscribe(keys.prediction_events(prediction_id))
        yield None  # subscribed: the caller can read state without missing what follows
        while (remaining := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, 1.0))
            yield json.loads(message["data"]) if message else None


async def wait_until_terminal(event_redis: redis.asyncio.Redis, prediction_id: str, timeout_s: float) -> bool:
    """Block (asynchronously) until the prediction is terminal or ``timeout_s`` passes; True if terminal."""
    async for _ in events(event_redis, prediction_id, timeout_s):
        raw = await event_redis.hget(keys.prediction(prediction_id), "status")
        if raw is not None and Status(json.loads(raw)).is_terminal():
            return True
    return False
