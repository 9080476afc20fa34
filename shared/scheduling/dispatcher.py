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

from shared.db import keys, lua
from shared.db.client import as_text, range_members
from shared.scheduling import queues
from shared.scheduling.task_messages import PredictMessages

# A claim this old was left by a dispatcher that died before writing its messages.
STALE_CLAIM_S = 60.0


def dispatched_list(family: str) -> str:
    """The Celery list (kombu's priority step) that dispatched items of ``family`` wait in."""
    return queues.priority_lists(family)[queues.PRIORITY_DISPATCHED]


class Dispatcher:
    def __init__(self, redis: Redis, messages: PredictMessages, ahead: int) -> None:
        self.redis = redis
        self.messages = messages
        self.ahead = ahead
        self._release = redis.register_script(lua.script("dispatcher_release"))
        self._join_ring = redis.register_script(lua.script("dispatcher_join_ring"))

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
