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

from shared.db import keys
from shared.db.client import range_members
from shared.predictions.record import format_timestamp, utcnow
from shared.predictions.status import Status
from shared.predictions.store import LUA_SET_STATUS, record_keys

# KEYS: as shared.predictions.store.LUA_SET_STATUS (record, events, running set, queued counters).
# ARGV[1]: JSON started_at, ARGV[2]: lease expiry, ARGV[3]: prediction id. Starts the prediction
# under a new attempt number and takes its lease, if the state table lets it enter PROCESSING (it is
# queued); returns that number, or 0 when not (running, finished, gone).
_START = (
    LUA_SET_STATUS
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return 0 end
local status = cjson.decode(current)
if not may_enter(status, PROCESSING) then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') + 1
set_status(status, PROCESSING, ARGV[3], 'started_at', ARGV[1], 'attempt', tostring(attempt))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return attempt
"""
)

# KEYS: as shared.predictions.store.LUA_SET_STATUS. ARGV[1]: now, ARGV[2]: max attempts, ARGV[3]: prediction id,
# ARGV[4]: JSON completed_at, ARGV[5]: JSON error for the last attempt.
# If the lease really lapsed (not renewed meanwhile), requeue (STARTING) or, once the prediction was
# tried max attempts times, fail it, as far as the state table allows. Returns the new status or "".
_REAP = (
    LUA_SET_STATUS
    + """
local expiry = redis.call('ZSCORE', KEYS[3], ARGV[3])
if not expiry or tonumber(expiry) > tonumber(ARGV[1]) then return '' end
redis.call('ZREM', KEYS[3], ARGV[3])
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return '' end
local status = cjson.decode(current)
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local target = STARTING
if attempt >= tonumber(ARGV[2]) then target = FAILED end
-- A lease belongs to a running prediction; any other status is not this reaper's to change.
if status ~= PROCESSING or not may_enter(status, target) then return '' end
if target == FAILED then
  set_status(status, FAILED, ARGV[3], 'completed_at', ARGV[4], 'error', ARGV[5])
else
  set_status(status, STARTING, ARGV[3])
end
return target
"""
)


class Leases:
    def __init__(self, redis: Redis, lease_s: float) -> None:
        self.redis = redis
        self.lease_s = lease_s
        self._start = redis.register_script(_START)
        self._reap = redis.register_script(_REAP)

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
