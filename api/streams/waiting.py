"""Waiting for a prediction to finish without holding a thread or a Redis connection: the process's
event hub (``api.streams.events``) wakes the waiter, which re-reads the status."""

from __future__ import annotations

import asyncio
import json

import redis.asyncio

from api.errors import ProblemError
from api.streams.events import RECHECK_S, EventHub
from shared.db import keys
from shared.predictions.status import Status

MAX_WAIT_S = 60


def parse_prefer_wait(header: str | None, default_s: int) -> int | None:
    """Seconds asked for by ``Prefer: wait=N`` (a whole number, 1-60) or a bare ``Prefer: wait``
    (``default_s``); None when absent. As RFC 7240 has it, other preferences are ignored, names are
    case-insensitive, parameters after ``;`` are ignored, and only the first ``wait`` counts; a ``wait``
    value that is not a whole number in range is a 400 naming the header."""
    if not header:
        return None
    for preference in header.split(","):
        name, has_value, value = preference.partition(";")[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]  # a quoted-string is the same value
        if not has_value or not value:
            return default_s
        return _wait_seconds(value)
    return None


def _wait_seconds(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise ProblemError(
            400, f"Prefer: wait must be a whole number of seconds from 1 to {MAX_WAIT_S}, got {value[:40]!r}"
        )
    digits = value.lstrip("0")  # the same number: RFC 7240's delta-seconds is digits
    seconds = int(digits or "0") if len(digits) <= len(str(MAX_WAIT_S)) else None  # long runs need no int()
    if seconds is None or not 1 <= seconds <= MAX_WAIT_S:
        raise ProblemError(400, f"Prefer: wait must be between 1 and {MAX_WAIT_S} seconds, got {value[:40]}")
    return seconds


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
