"""What was sent, for clients to see and send again: each delivery with its attempts, a prediction's
deliveries, a tenant's failed ones, and a finished ``completed`` delivery made pending again.

The outbox (``shared.webhooks.outbox``) writes all of it as it records and attempts deliveries: a
prediction's index of its deliveries (``keys.webhook_deliveries``), each delivery's attempts
(``keys.webhook_delivery_attempts``) and its tenant's failed ``completed`` deliveries
(``keys.tenant_failed_webhooks``, scored by when each failed, in unique microseconds, so a score is a
list cursor). A batch has one delivery, under a fixed id (``batch_delivery_id``): it needs no index.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from shared.batches.records import batch_delivery_id
from shared.db import keys, lua
from shared.db.client import as_text, range_members
from shared.webhooks.outbox import CLAIM_LEASE_S, PENDING, Attempt, Delivery

# A prediction's deliveries listed at most (its latest; a long prediction's ``logs`` events are many).
MAX_LISTED = 1000


@dataclass(frozen=True)
class SentDelivery:
    """A delivery and its attempts, oldest first."""

    delivery: Delivery
    attempts: list[Attempt]


@dataclass(frozen=True)
class FailedPage:
    """A page of failed deliveries, newest failure first, and where the pages beside it start."""

    results: list[SentDelivery]
    # Scores (unix microseconds) for the page links: older ones after ``older_than``, newer ones
    # after ``newer_than``; None where there is nothing that way.
    older_than: int | None
    newer_than: int | None


@dataclass(frozen=True)
class TimeWindow:
    """When deliveries failed, in unix microseconds: from ``since`` (included) to ``until`` (excluded)."""

    since: int | None = None
    until: int | None = None


class DeliveryHistory:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._resend = lua.register(redis, "webhook_outbox_resend")

    def with_attempts(self, delivery_ids: Sequence[str]) -> list[SentDelivery]:
        """Those deliveries that still exist, in the order given, each with its attempts."""
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hgetall(keys.webhook_delivery(delivery_id))
                pipe.lrange(keys.webhook_delivery_attempts(delivery_id), 0, -1)
            found = pipe.execute()
        return [
            SentDelivery(Delivery.from_hash(fields), [Attempt.from_json(raw) for raw in attempts])
            for fields, attempts in zip(found[::2], found[1::2], strict=True)
            if fields
        ]

    def get(self, delivery_id: str) -> SentDelivery | None:
        found = self.with_attempts([delivery_id])
        return found[0] if found else None

    def of_prediction(self, prediction_id: str) -> list[SentDelivery]:
        """A prediction's deliveries, every event, in the order they were recorded (its latest
        ``MAX_LISTED``)."""
        ids = range_members(self.redis.zrange(keys.webhook_deliveries(prediction_id), -MAX_LISTED, -1))
        return self.with_attempts(ids)

    def of_batch(self, batch_id: str) -> list[SentDelivery]:
        """A batch's one delivery, once recorded."""
        return self.with_attempts([batch_delivery_id(batch_id)])

    def failed(self, tenant: str, window: TimeWindow, before: int | None, after: int | None, limit: int) -> FailedPage:
        """A page of the tenant's failed deliveries in ``window``, newest first: those that failed before
        ``before`` (or the newest), or, paging back, the oldest ones after ``after``."""
        key = keys.tenant_failed_webhooks(tenant)
        backwards = after is None  # towards older failures
        if after is None:
            upper = _below(before, window.until)
            found = _scored(
                self.redis.zrevrangebyscore(key, upper, _lower(window), start=0, num=limit + 1, withscores=True)
            )
        else:
            lower = f"({after}" if window.since is None or after >= window.since else str(window.since)
            found = _scored(
                self.redis.zrangebyscore(key, lower, _upper(window), start=0, num=limit + 1, withscores=True)
            )
        more = len(found) > limit
        page = found[:limit] if backwards else found[:limit][::-1]  # newest first, whichever way it was read
        results = self.with_attempts([member for member, _ in page])
        self.forget_failed(tenant, {member for member, _ in page} - {sent.delivery.id for sent in results})
        if not page:
            return FailedPage(results, None, None)
        newest, oldest = page[0][1], page[-1][1]
        if backwards:
            return FailedPage(results, oldest if more else None, newest if before is not None else None)
        return FailedPage(results, oldest, newest if more else None)

    def failed_ids(self, tenant: str, window: TimeWindow, limit: int) -> list[str]:
        """Up to ``limit`` of the tenant's failed deliveries in ``window``, oldest failure first."""
        key = keys.tenant_failed_webhooks(tenant)
        return range_members(self.redis.zrangebyscore(key, _lower(window), _upper(window), start=0, num=limit))

    def count_failed(self, tenant: str, window: TimeWindow) -> int:
        return int(self.redis.zcount(keys.tenant_failed_webhooks(tenant), _lower(window), _upper(window)))

    def resend(self, delivery: Delivery, body: str, *, only_failed: bool = False) -> bool:
        """Make a finished delivery pending again, due now, with ``body`` (rendered afresh), for one more
        attempt (``retry`` off: a manual retry is not put back on the schedule); it leaves its tenant's
        failed deliveries. False when it is pending already, or gone, or (``only_failed``) no longer among
        its tenant's failed deliveries: sent again since by another retry, and maybe delivered."""
        now = time.time()
        fields = {"state": PENDING, "body": body, "next_attempt_at": now, "retry": False}
        pairs = [item for name, value in fields.items() for item in (name, json.dumps(value))]
        return bool(
            self._resend(
                keys=[
                    keys.webhook_delivery(delivery.id),
                    keys.webhook_due(),
                    keys.tenant_failed_webhooks(delivery.tenant),
                ],
                args=[delivery.id, now + CLAIM_LEASE_S, "1" if only_failed else "0", *pairs],
            )
        )

    def forget_failed(self, tenant: str, delivery_ids: Collection[str]) -> None:
        """Those deliveries leave the tenant's failed ones (they expired with their record)."""
        if delivery_ids:
            self.redis.zrem(keys.tenant_failed_webhooks(tenant), *delivery_ids)


def _scored(reply: Any) -> list[tuple[str, int]]:
    """A range read WITHSCORES: (member, score as an integer: microseconds)."""
    return [(as_text(member), int(score)) for member, score in reply]


def _lower(window: TimeWindow) -> str:
    return "-inf" if window.since is None else str(window.since)


def _upper(window: TimeWindow) -> str:
    return "+inf" if window.until is None else f"({window.until}"


def _below(before: int | None, until: int | None) -> str:
    """The exclusive upper score bound of both (``+inf`` when neither)."""
    bounds = [bound for bound in (before, until) if bound is not None]
    return f"({min(bounds)}" if bounds else "+inf"
