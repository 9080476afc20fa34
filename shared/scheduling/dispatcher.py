"""Kiln's dispatcher: batch items wait in compact per-tenant lists and reach Celery round-robin.

A Celery message costs about 1 KiB of Redis, and kombu's lists are first come, first served. Items
of ``/v1/batches`` therefore wait in Kiln's own lists instead: one list of prediction ids per
(model family, tenant), and a ring of the tenants that have items waiting. ``release`` tops the
family's dispatched list in Celery (priority step ``PRIORITY_DISPATCHED``) up to ``ahead`` waiting
messages, taking one item from each tenant of the ring in turn, so a tenant that just submitted
waits for at most the running job and ``ahead`` others, however many another tenant has queued
(docs/scheduling.md).

Where it runs: after a batch is stored (the API), when a worker starts a job (its message left a
gap), and as a maintenance job of every worker. Every step is an atomic Lua claim, so any number of
them may run at once. Nothing is lost to a crash: an item is either in Kiln's lists, claimed (then
its message goes out in the same transaction that drops the claim, and a claim left behind by a
dead dispatcher is sent again), or in Celery's list. A message sent twice is harmless: the record's
lease lets one delivery run it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from redis import Redis
from redis.client import Pipeline

from shared.db import keys
from shared.db.client import as_text, lua_key, range_members
from shared.predictions.status import LUA_STATUS_TABLE
from shared.scheduling import queues
from shared.scheduling.task_messages import PredictMessages

# A claim this old was left by a dispatcher that died before writing its messages.
STALE_CLAIM_S = 60.0
# Most list entries one release looks at (canceled items are skipped without a message).
_SCAN_LIMIT = 1000

# KEYS[1]: the family's tenant ring, KEYS[2]: Celery's list for dispatched items, KEYS[3]: the
# claimed set. ARGV[1]: family, ARGV[2]: messages to keep waiting in Celery, ARGV[3]: now.
# Takes items round-robin over the ring's tenants until Celery's list would hold ARGV[2]; items no
# longer queued (canceled) are dropped on the way. Claims and returns the ids taken.
_RELEASE = (
    LUA_STATUS_TABLE
    + f"""
local queued = cjson.encode(STARTING)
local wanted = tonumber(ARGV[2]) - redis.call('LLEN', KEYS[2])
local taken, looked = {{}}, 0
while #taken < wanted and looked < {_SCAN_LIMIT} do
  local tenant = redis.call('LPOP', KEYS[1])
  if not tenant then break end
  local list = {lua_key(keys.dispatch_queue, "ARGV[1]", "tenant")}
  local id = redis.call('LPOP', list)
  while id do
    looked = looked + 1
    if redis.call('HGET', {lua_key(keys.prediction, "id")}, 'status') == queued then break end
    if looked >= {_SCAN_LIMIT} then id = nil break end
    id = redis.call('LPOP', list)
  end
  if id then
    table.insert(taken, id)
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1] .. ' ' .. id)
  end
  if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], tenant) end
end
return taken
"""
)

# KEYS[1]: the family's tenant ring. ARGV[1]: tenant. Puts the tenant at the head of the ring unless
# it is there already: a tenant that had nothing waiting is served next, so its first item waits for
# the running job and the ``ahead`` ones only, whoever else has a backlog (it then takes its turns).
_JOIN_RING = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('LPUSH', KEYS[1], ARGV[1]) end
return 1
"""


def dispatched_list(family: str) -> str:
    """The Celery list (kombu's priority step) that dispatched items of ``family`` wait in."""
    return queues.priority_lists(family)[queues.PRIORITY_DISPATCHED]


class Dispatcher:
    def __init__(self, redis: Redis, messages: PredictMessages, ahead: int) -> None:
        self.redis = redis
        self.messages = messages
        self.ahead = ahead
        self._release = redis.register_script(_RELEASE)
        self._join_ring = redis.register_script(_JOIN_RING)

    def add_to_pipeline(self, pipe: Pipeline, family: str, tenant: str, prediction_ids: Sequence[str]) -> None:
        """Queue ``prediction_ids`` (one tenant's, oldest first) for ``family`` in the caller's
        transaction, the one that stores their records."""
        if not prediction_ids:
            return
        pipe.rpush(keys.dispatch_queue(family, tenant), *prediction_ids)
        self._join_ring(keys=[keys.dispatch_tenants(family)], args=[tenant], client=pipe)

    def release(self, family: str) -> int:
        """Move waiting items of ``family`` onto Celery's queue, round-robin over tenants, until
        ``ahead`` messages wait there. Returns how many were sent."""
        claimed = [
            as_text(i)
            for i in self._release(
                keys=[keys.dispatch_tenants(family), dispatched_list(family), keys.dispatch_claimed()],
                args=[family, self.ahead, time.time()],
            )
        ]
        self._send(family, claimed)
        return len(claimed)

    def release_all(self) -> int:
        """``release`` for every GPU family, and resend claims a dead dispatcher left (a maintenance job)."""
        return sum(self.release(family) for family in queues.GPU_QUEUES) + self.resend_stale_claims()

    def resend_stale_claims(self) -> int:
        stale = range_members(
            self.redis.zrangebyscore(keys.dispatch_claimed(), "-inf", time.time() - STALE_CLAIM_S, start=0, num=100)
        )
        by_family: dict[str, list[str]] = {}
        for member in stale:
            family, _, prediction_id = member.partition(" ")
            by_family.setdefault(family, []).append(prediction_id)
        for family, ids in by_family.items():
            self._send(family, ids)
        return len(stale)

    def waiting(self, family: str, tenant: str) -> int:
        return int(self.redis.llen(keys.dispatch_queue(family, tenant)))

    def _send(self, family: str, prediction_ids: list[str]) -> None:
        """Push the Celery messages of claimed items and drop their claims, in one transaction."""
        if not prediction_ids:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            for prediction_id in prediction_ids:
                list_key, message = self.messages.render(prediction_id, family, queues.PRIORITY_DISPATCHED)
                pipe.lpush(list_key, message)
            pipe.zrem(keys.dispatch_claimed(), *(f"{family} {i}" for i in prediction_ids))
            pipe.execute()
