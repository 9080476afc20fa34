"""Kiln's dispatcher: batch items wait in compact per-tenant lists and reach Celery round-robin.

A Celery message costs about 1 KiB of Redis, and kombu's lists are first come, first served. Items
of ``/v1/batches`` therefore wait in Kiln's own lists instead: one list of prediction ids per
(model family, tenant), and a ring of the tenants that have items waiting. ``release`` tops the
family's dispatched list in Celery (priority step ``PRIORITY_DISPATCHED``) up to ``ahead`` waiting
messages, taking one item from each tenant of the ring in turn, so a tenant that just submitted
waits for at most the running job and ``ahead`` others, however many another tenant has queued
(docs/scheduling.md).

The low-priority lane (``priority: "low"``, of any create) is a second set of such lists per family,
released the same way into the family's last step (``PRIORITY_LOW``), but only while the family's
normal steps in Celery and its normal dispatcher lists are all empty: a low prediction starts only
when no normal one waits, and tenants take turns within each lane. Every item gets a ticket of its
line (``shared.scheduling.queue_lines``) in the transaction that lists it.

Where it runs: after a batch or a low prediction is stored (the API), when a worker starts a job (its
message left a gap), and as a maintenance job of every worker. Every step is an atomic Lua claim, so any number of
them may run at once. Nothing is lost to a crash: an item is either in Kiln's lists, claimed (then
its message goes out in the same transaction that drops the claim, and a claim left behind by a
dead dispatcher is sent again), or in Celery's list. A message sent twice is harmless: the record's
lease lets one delivery run it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from shared.db import keys, lua
from shared.db.client import as_text, range_members
from shared.scheduling import queues
from shared.scheduling.lost_messages import mark_sent_in_pipeline
from shared.scheduling.queue_lines import QueueLines
from shared.scheduling.task_messages import PredictMessages

# A claim this old was left by a dispatcher that died before writing its messages.
STALE_CLAIM_S = 60.0


def dispatched_list(family: str) -> str:
    """The Celery list (kombu's priority step) that dispatched items of ``family`` wait in."""
    return queues.priority_lists(family)[queues.PRIORITY_DISPATCHED]


def low_lane_gate(family: str) -> list[str]:
    """What must all be empty for the low lane to release: the family's normal Celery steps and its
    normal dispatcher ring (normal work waiting there, about to be released)."""
    lists = queues.priority_lists(family)
    return [lists[step] for step in queues.NORMAL_STEPS] + [keys.dispatch_tenants(family)]


@dataclass(frozen=True)
class ChunkLane:
    """A dispatcher lane a batch chunk's items wait in (``shared.scheduling.dispatcher``): its name, model
    family and queue line, and the ids, oldest first."""

    name: str
    family: str
    line: str
    ids: Sequence[str]


class Dispatcher:
    def __init__(self, redis: Redis, messages: PredictMessages, ahead: int) -> None:
        self.redis = redis
        self.messages = messages
        self.ahead = ahead
        self.lines = QueueLines(redis)
        self._release = lua.register(redis, "dispatcher_release")
        self._join_ring = lua.register(redis, "dispatcher_join_ring")

    def add_to_pipeline(
        self, pipe: Pipeline, family: str, tenant: str, prediction_ids: Sequence[str], *, low: bool = False
    ) -> None:
        """Queue ``prediction_ids`` (one tenant's, oldest first) for ``family``, in its low lane when
        ``low``, in the caller's transaction, the one that stores their records; with their tickets."""
        if not prediction_ids:
            return
        step = queues.PRIORITY_LOW if low else queues.PRIORITY_DISPATCHED
        lane = queues.dispatch_lane(family, step)
        pipe.rpush(keys.dispatch_queue(lane, tenant), *prediction_ids)
        self._join_ring(keys=[keys.dispatch_tenants(lane)], args=[tenant], client=pipe)
        self.lines.enter_in_pipeline(pipe, family, step, tenant, prediction_ids)

    def lane_of(self, family: str, prediction_ids: Sequence[str], *, low: bool = False) -> ChunkLane:
        """Where ``prediction_ids`` (one tenant's, oldest first) wait for ``family`` (its low lane when
        ``low``), for a batch chunk's store to queue them itself (``PredictionStore.create_batch_chunk``:
        the tenant's list, the ring and a queue-line ticket each, as ``add_to_pipeline`` does)."""
        step = queues.PRIORITY_LOW if low else queues.PRIORITY_DISPATCHED
        return ChunkLane(queues.dispatch_lane(family, step), family, str(step), prediction_ids)

    def release(self, family: str) -> int:
        """Move waiting items of ``family`` onto Celery's queue, round-robin over tenants, until
        ``ahead`` messages wait there: the normal lane's, then the low lane's if no normal work waits.
        Returns how many were sent."""
        return self._release_lane(family, queues.PRIORITY_DISPATCHED) + self._release_lane(family, queues.PRIORITY_LOW)

    def _release_lane(self, family: str, step: int) -> int:
        lane = queues.dispatch_lane(family, step)
        gate = low_lane_gate(family) if step == queues.PRIORITY_LOW else []
        claimed = [
            as_text(i)
            for i in self._release(
                keys=[
                    keys.dispatch_tenants(lane),
                    queues.priority_lists(family)[step],
                    keys.dispatch_claimed(),
                    keys.queue_line(family, str(step)),
                    *gate,
                ],
                args=[lane, self.ahead, time.time(), STALE_CLAIM_S],
            )
        ]
        self._send(lane, claimed)
        return len(claimed)

    def release_all(self) -> int:
        """``release`` for every GPU family, and resend claims a dead dispatcher left (a maintenance job)."""
        return sum(self.release(family) for family in queues.GPU_QUEUES) + self.resend_stale_claims()

    def resend_stale_claims(self) -> int:
        stale = range_members(
            self.redis.zrangebyscore(keys.dispatch_claimed(), "-inf", time.time() - STALE_CLAIM_S, start=0, num=100)
        )
        by_lane: dict[str, list[str]] = {}
        for member in stale:
            lane, _, prediction_id = member.partition(" ")
            by_lane.setdefault(lane, []).append(prediction_id)
        for lane, ids in by_lane.items():
            self._send(lane, ids)
        return len(stale)

    def waiting(self, family: str, tenant: str) -> int:
        return int(self.redis.llen(keys.dispatch_queue(family, tenant)))

    def _send(self, lane: str, prediction_ids: list[str]) -> None:
        """Push the Celery messages of claimed items, drop their claims and file them in the waiting index
        (``shared.scheduling.lost_messages``), in one transaction."""
        if not prediction_ids:
            return
        family, step = queues.lane_step(lane)
        with self.redis.pipeline(transaction=True) as pipe:
            for prediction_id in prediction_ids:
                list_key, message = self.messages.render(prediction_id, family, step)
                pipe.lpush(list_key, message)
            pipe.zrem(keys.dispatch_claimed(), *(f"{lane} {i}" for i in prediction_ids))
            mark_sent_in_pipeline(pipe, prediction_ids)
            pipe.execute()
