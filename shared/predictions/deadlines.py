"""Deadlines (Replicate's ``Cancel-After`` header): a prediction not finished by then is stopped.

``Cancel-After: 30s`` (``5m``, ``1h30m``, ``1.5s``, ``250ms``) on a create sets the prediction's
``deadline``. A deadline reached before the prediction starts ends it ``aborted``: it never runs,
and a worker that receives it drops it. Reached while it runs, it ends ``canceled`` at the next
denoising step, as a user's cancel would.

Three things enforce it, each through ``shared.predictions.lifecycle``:

- the maintenance job ``expire_due`` (every worker process) ends queued predictions whose deadline
  passed, and flags running ones, from the sorted set ``keys.deadlines``;
- a worker about to start a prediction past its deadline aborts it instead (``worker.runner``);
- a running prediction checks its deadline at every step (``worker.context``).
"""

from __future__ import annotations

import re
import time
from datetime import datetime

from redis import Redis

from shared.db import keys
from shared.db.client import range_members
from shared.predictions.lifecycle import PredictionLifecycle

# Go's duration syntax, as Replicate takes it: one or more <number><unit>, units h, m, s, ms.
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?(h|ms|m|s))+\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Longer than any record is kept: a deadline beyond it means nothing.
MAX_DURATION_S = 7 * 24 * 3600
# How many due deadlines one maintenance run handles (the next run takes the rest).
BATCH = 200


class BadDuration(ValueError):
    pass


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``30s``, ``5m`` or ``1h30m``; ``BadDuration`` saying why not."""
    value = text.strip()
    if not _DURATION.match(value):
        raise BadDuration(f"{text[:40]!r} is not a duration such as 30s, 5m or 1h30m (units h, m, s, ms)")
    seconds = sum(float(number) * _UNIT_S[unit] for number, unit in _PART.findall(value))
    if seconds <= 0:
        raise BadDuration(f"{text[:40]!r} is not a positive duration")
    if seconds > MAX_DURATION_S:
        raise BadDuration(f"{text[:40]!r} is longer than the most allowed, {MAX_DURATION_S // 3600} h")
    return seconds


def passed(deadline: datetime | None, now: float | None = None) -> bool:
    return deadline is not None and deadline.timestamp() <= (time.time() if now is None else now)


def expire_due(lifecycle: PredictionLifecycle, redis: Redis, now: float | None = None) -> int:
    """End (``aborted``) the queued predictions whose deadline passed and flag the running ones.
    Each due id is claimed with ZREM, so of several workers running this only one handles it."""
    due = range_members(
        redis.zrangebyscore(keys.deadlines(), "-inf", time.time() if now is None else now, start=0, num=BATCH)
    )
    handled = 0
    for prediction_id in due:
        if not redis.zrem(keys.deadlines(), prediction_id):
            continue  # another worker claimed it
        prediction = lifecycle.store.get(prediction_id)
        if prediction is not None:
            lifecycle.expire(prediction)
            handled += 1
    return handled
