"""Waiting for a prediction to finish without holding a thread or a Redis connection: the process's
event hub (``api.events``) wakes the waiter, which re-reads the status."""

from __future__ import annotations

import asyncio
import json
import re

import redis.asyncio

from api.errors import ProblemError
from api.events import RECHECK_S, EventHub
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


async def wait_until_terminal(hub: EventHub, client: redis.asyncio.Redis, prediction_id: str, timeout_s: float) -> bool:
    """Block (asynchronously) until the prediction is terminal or ``timeout_s`` passes; True if terminal."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with hub.subscribe(prediction_id) as subscription:
        while True:
            raw = await client.hget(keys.prediction(prediction_id), "status")
            if raw is not None and Status(json.loads(raw)).is_terminal():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await subscription.wait(min(remaining, RECHECK_S))
