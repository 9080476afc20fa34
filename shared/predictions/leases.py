"""Leases on running predictions, so work a dead worker abandoned is noticed in seconds.

A worker starts a prediction and takes its lease in one atomic step, then renews the lease while it
runs (its heartbeat). Any worker's reaper finds lapsed leases and puts those predictions back on
the queue, or fails them once they have been tried ``max_attempts`` times. Celery's own
redelivery (``visibility_timeout``, an hour or more) is only a backstop; a redelivered message
finds the prediction already requeued or finished and does nothing.
"""

from __future__ import annotations

import json
import time

from redis import Redis

from shared.db import keys, lua
from shared.db.client import range_members
from shared.predictions.record import format_timestamp, utcnow
from shared.predictions.status import Status
from shared.predictions.store import record_keys


class Leases:
    def __init__(self, redis: Redis, lease_s: float) -> None:
        self.redis = redis
        self.lease_s = lease_s
        self._start = lua.register(redis, "leases_start")
        self._reap = lua.register(redis, "leases_reap")

    def start(self, prediction_id: str) -> int | None:
        """Move a queued prediction to processing under this worker's lease; its attempt number, or
        None when it is not queued (canceled, finished, or already taken by another delivery)."""
        attempt = self._start(
            keys=record_keys(prediction_id),
            args=[json.dumps(format_timestamp(utcnow())), time.time() + self.lease_s, prediction_id],
        )
        return int(attempt) or None

    def renew(self, prediction_id: str) -> bool:
        """Extend the lease; False when it is gone (reaped, or the prediction finished)."""
        return bool(self.redis.zadd(keys.running(), {prediction_id: time.time() + self.lease_s}, xx=True, ch=True))

    def lapsed(self, limit: int = 100) -> list[str]:
        return range_members(self.redis.zrangebyscore(keys.running(), "-inf", time.time(), start=0, num=limit))

    def reap(self, prediction_id: str, max_attempts: int) -> Status | None:
        """Requeue (``starting``) or fail (``failed``) a prediction whose lease lapsed; None if it was
        renewed or finished meanwhile. The bare status change: ``PredictionLifecycle.reap`` ends a
        failed one."""
        attempts = self.redis.hget(keys.prediction(prediction_id), "attempt")
        tried = int(attempts or 0)
        error = f"worker died {tried} time{'s' if tried != 1 else ''} while running this prediction"
        outcome = self._reap(
            keys=record_keys(prediction_id),
            args=[time.time(), max_attempts, prediction_id, json.dumps(format_timestamp(utcnow())), json.dumps(error)],
        )
        return Status(outcome.decode()) if outcome else None
