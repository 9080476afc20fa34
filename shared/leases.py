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

from shared import keys, retention
from shared.prediction import format_timestamp, utcnow
from shared.queue_counters import LUA_QUEUED_DELTA, counter_keys
from shared.status import Status

# KEYS[1]: record, KEYS[2]: events, KEYS[3]: running set, KEYS[4..5]: queued counters (shared.queue_counters).
# ARGV[1]: JSON started_at, ARGV[2]: lease expiry, ARGV[3]: prediction id. Starts a queued prediction under a new attempt number and takes
# its lease; returns that number, or 0 when the prediction is not queued (running, finished, gone).
_START = LUA_QUEUED_DELTA + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or cjson.decode(current) ~= 'starting' then return 0 end
queued_delta(-1)
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') + 1
redis.call('HSET', KEYS[1], 'status', '"processing"', 'started_at', ARGV[1], 'attempt', tostring(attempt))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
redis.call('PUBLISH', KEYS[2], '{"status": "processing"}')
return attempt
"""

# KEYS[1]: record, KEYS[2]: events, KEYS[3]: running set, KEYS[4..5]: queued counters. ARGV[1]: now,
# ARGV[2]: max attempts, ARGV[3]: prediction id, ARGV[4]: JSON completed_at, ARGV[5]: JSON error for the last attempt.
# If the lease really lapsed (not renewed meanwhile), requeue or fail. Returns the new status or "".
_REAP = LUA_QUEUED_DELTA + """
local expiry = redis.call('ZSCORE', KEYS[3], ARGV[3])
if not expiry or tonumber(expiry) > tonumber(ARGV[1]) then return '' end
redis.call('ZREM', KEYS[3], ARGV[3])
local current = redis.call('HGET', KEYS[1], 'status')
if not current or cjson.decode(current) ~= 'processing' then return '' end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if attempt >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', '"failed"', 'completed_at', ARGV[4], 'error', ARGV[5])
  redis.call('PUBLISH', KEYS[2], '{"status": "failed"}')
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', '"starting"')
queued_delta(1)
redis.call('PUBLISH', KEYS[2], '{"status": "starting"}')
return 'starting'
"""


def _record_keys(prediction_id: str) -> list[str]:
    return [keys.prediction(prediction_id), keys.prediction_events(prediction_id), keys.running(), *counter_keys()]


class Leases:
    def __init__(self, redis: Redis, lease_s: float, retention_s: float = 3600) -> None:
        self.redis = redis
        self.lease_s = lease_s
        self.retention_s = retention_s
        self._start = redis.register_script(_START)
        self._reap = redis.register_script(_REAP)

    def start(self, prediction_id: str) -> int | None:
        """Move a queued prediction to processing under this worker's lease; its attempt number, or
        None when it is not queued (canceled, finished, or already taken by another delivery)."""
        attempt = self._start(keys=_record_keys(prediction_id),
                              args=[json.dumps(format_timestamp(utcnow())), time.time() + self.lease_s, prediction_id])
        return int(attempt) or None

    def renew(self, prediction_id: str) -> bool:
        """Extend the lease; False when it is gone (reaped, or the prediction finished)."""
        return bool(self.redis.zadd(keys.running(), {prediction_id: time.time() + self.lease_s}, xx=True, ch=True))

    def lapsed(self, limit: int = 100) -> list[str]:
        return [i.decode() for i in self.redis.zrangebyscore(keys.running(), "-inf", time.time(), start=0, num=limit)]

    def reap(self, prediction_id: str, max_attempts: int) -> Status | None:
        """Requeue (``starting``) or fail (``failed``) a prediction whose lease lapsed; None if it was
        renewed or finished meanwhile."""
        attempts = self.redis.hget(keys.prediction(prediction_id), "attempt")
        tried = int(attempts or 0)
        error = f"worker died {tried} time{'s' if tried != 1 else ''} while running this prediction"
        outcome = self._reap(keys=_record_keys(prediction_id),
                             args=[time.time(), max_attempts, prediction_id, json.dumps(format_timestamp(utcnow())),
                                   json.dumps(error)])
        if not outcome:
            return None
        if outcome == b"failed":
            retention.schedule(self.redis, "prediction", prediction_id, time.time() + self.retention_s)
        return Status(outcome.decode())
