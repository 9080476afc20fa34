"""Prediction records in Redis, with atomic status transitions.

Every status change runs as one Lua script that checks the current status against the allowed
sources, so a cancel racing a start, a duplicate completion or a late redelivery can never move a
prediction out of a terminal state.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from redis import Redis

from shared import keys, retention
from shared.prediction import Prediction, format_timestamp, utcnow
from shared.queue_counters import LUA_QUEUED_DELTA, QueuedCounters, counter_keys
from shared.status import ALLOWED_SOURCES, Status

# KEYS[1]: record, KEYS[2]: its event channel, KEYS[3]: the running set (leases), KEYS[4..5]: the
# queued counters (shared.queue_counters), moved when the prediction leaves or re-enters "starting".
# ARGV[1]: JSON target status; ARGV[2]: JSON list of allowed source statuses; ARGV[3]: the attempt
# that must be current ("" for any), so a worker that lost its lease cannot finish a rerun's work;
# ARGV[4]: prediction id; ARGV[5..]: field, JSON value pairs to set with the new status.
# Returns 1 when it changed the record, 0 when not, false when there is none; announces the
# change to waiters and streams; leaving "processing" drops the lease.
_TRANSITION = LUA_QUEUED_DELTA + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[3] then return 0 end
local status = cjson.decode(current)
for _, allowed in ipairs(cjson.decode(ARGV[2])) do
  if status == allowed then
    local target = cjson.decode(ARGV[1])
    if status == 'starting' and target ~= 'starting' then queued_delta(-1)
    elseif target == 'starting' and status ~= 'starting' then queued_delta(1) end
    redis.call('HSET', KEYS[1], 'status', ARGV[1], unpack(ARGV, 5))
    if target ~= 'processing' then redis.call('ZREM', KEYS[3], ARGV[4]) end
    redis.call('PUBLISH', KEYS[2], '{"status": ' .. ARGV[1] .. '}')
    return 1
  end
end
return 0
"""

# KEYS[1]: record, KEYS[2]: its event channel, KEYS[3..4]: queued counters. ARGV[1]: JSON completed_at.
# A queued prediction is canceled on the spot; a running one is flagged, and its worker stops at the next denoising step.
# Returns the status found.
_REQUEST_CANCEL = LUA_QUEUED_DELTA + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
local status = cjson.decode(current)
if status == 'starting' then
  queued_delta(-1)
  redis.call('HSET', KEYS[1], 'status', cjson.encode('canceled'), 'completed_at', ARGV[1])
  redis.call('PUBLISH', KEYS[2], '{"status": "canceled"}')
elseif status == 'processing' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
end
return current
"""


# Caps left unset: more than Redis could ever hold.
_UNCAPPED = 2**62


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        value = format_timestamp(value)
    return json.dumps(value)


class PredictionStore:
    def __init__(self, redis: Redis, retention_s: float = 3600) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self._transition = redis.register_script(_TRANSITION)
        self._request_cancel = redis.register_script(_REQUEST_CANCEL)
        self.queued = QueuedCounters(redis)

    def create(self, prediction: Prediction, *, tenant_cap: int | None = None, total_cap: int | None = None) -> None:
        self.create_many([prediction], tenant_cap=tenant_cap, total_cap=total_cap)

    def create_many(self, predictions: Sequence[Prediction], *, tenant_cap: int | None = None,
                    total_cap: int | None = None,
                    messages: Callable[[int], Sequence[tuple[str, str]]] | None = None) -> None:
        """Store queued predictions of one tenant in two round trips: count them against the caps
        (all or none: ``QueueFull`` stores nothing), then write every record in one transaction.

        ``messages``, called with how many of the tenant's predictions were already queued, gives
        ``(list, message)`` pairs (``shared.task_messages``) pushed onto their queues in that same
        transaction, so a worker never pops an id whose record is missing and no stored prediction
        is left without its message."""
        if not predictions:
            return
        tenant = predictions[0].tenant
        if any(p.tenant != tenant for p in predictions):
            raise ValueError("create_many stores one tenant's predictions")
        families = [p.queue for p in predictions]
        queued_before = self.queued.admit(tenant, families, tenant_cap or _UNCAPPED, total_cap or _UNCAPPED)
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                for prediction in predictions:
                    pipe.hset(keys.prediction(prediction.id), mapping=prediction.to_redis_hash())
                pipe.zadd(keys.tenant_predictions(tenant), {p.id: 0 for p in predictions})
                for model, count in Counter(p.model for p in predictions).items():
                    pipe.incrby(keys.model_run_count(model), count)
                for list_key, message in messages(queued_before) if messages else ():
                    pipe.lpush(list_key, message)
                pipe.execute()
        except BaseException:
            self.queued.release(tenant, families)
            raise

    def get(self, prediction_id: str) -> Prediction | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.prediction(prediction_id))
            pipe.get(keys.prediction_logs(prediction_id))
            fields, logs = pipe.execute()
        if not fields:
            return None
        return Prediction.from_redis_hash(_decode_hash(fields), (logs or b"").decode())

    def get_many(self, prediction_ids: Sequence[str]) -> list[Prediction]:
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                pipe.hgetall(keys.prediction(prediction_id))
                pipe.get(keys.prediction_logs(prediction_id))
            replies = pipe.execute()
        return [
            Prediction.from_redis_hash(_decode_hash(fields), (logs or b"").decode())
            for fields, logs in zip(replies[::2], replies[1::2])
            if fields
        ]

    def transition(self, prediction_id: str, target: Status, *, if_attempt: int | None = None, **fields: Any) -> bool:
        """Move to ``target`` and set ``fields`` atomically, if the current status allows it (and,
        when ``if_attempt`` is given, only if that attempt is still the current one)."""
        return self._set_if(prediction_id, target, ALLOWED_SOURCES[target], if_attempt, fields)

    def update_while_processing(self, prediction_id: str, *, if_attempt: int | None = None, **fields: Any) -> bool:
        """Set fields of a running prediction (e.g. its output before it completes); no-op otherwise."""
        return self._set_if(prediction_id, Status.PROCESSING, {Status.PROCESSING}, if_attempt, fields)

    def _set_if(self, prediction_id: str, target: Status, sources: Iterable[Status], attempt: int | None,
                fields: dict[str, Any]) -> bool:
        allowed = sorted(status.value for status in sources)
        args: list[str] = [_encode(target.value), json.dumps(allowed), "" if attempt is None else json.dumps(attempt),
                           prediction_id]
        for name, value in fields.items():
            args += [name, _encode(value)]
        changed = self._transition(
            keys=[keys.prediction(prediction_id), keys.prediction_events(prediction_id), keys.running(),
                  *counter_keys()], args=args
        )
        if changed == 1 and target.is_terminal():
            self.schedule_retention(prediction_id)
        return changed == 1

    def schedule_retention(self, prediction_id: str) -> None:
        """A finished prediction's inputs and outputs are deleted ``retention_s`` from now."""
        retention.schedule(self.redis, "prediction", prediction_id, time.time() + self.retention_s)

    def status(self, prediction_id: str) -> Status | None:
        raw = self.redis.hget(keys.prediction(prediction_id), "status")
        return None if raw is None else Status(json.loads(raw))

    def request_cancel(self, prediction_id: str) -> Status | None:
        """Cancel a queued prediction now, or flag a running one. Returns the status it had."""
        found = self._request_cancel(
            keys=[keys.prediction(prediction_id), keys.prediction_events(prediction_id), *counter_keys()],
            args=[_encode(utcnow())]
        )
        if found is None:
            return None
        if Status(json.loads(found)) is Status.STARTING:
            self.schedule_retention(prediction_id)
        return Status(json.loads(found))

    def cancel_requested(self, prediction_id: str) -> bool:
        return self.redis.hget(keys.prediction(prediction_id), "cancel_requested") == b"true"

    def append_log(self, prediction_id: str, text: str) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.append(keys.prediction_logs(prediction_id), text)
            pipe.publish(keys.prediction_events(prediction_id), json.dumps({"logs": text}))
            pipe.execute()

    def list_for_tenant(
        self, tenant: str, *, before: str | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[Prediction], bool]:
        """Newest first. ``before``/``after`` are ids bounding the page (exclusive).

        Returns the page and whether more exist beyond it in the direction of travel.
        """
        index = keys.tenant_predictions(tenant)
        if after is not None:
            ids = self.redis.zrangebylex(index, f"({after}", "+", start=0, num=limit + 1)
            more = len(ids) > limit
            ids = list(reversed(ids[:limit]))
        else:
            upper = f"({before}" if before is not None else "+"
            ids = self.redis.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)
            more = len(ids) > limit
            ids = ids[:limit]
        return self.get_many([i.decode() for i in ids]), more


def _decode_hash(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}
