"""Counters of queued (``starting``) predictions per tenant and per model family, for backpressure
and ``GET /v1/queue``.

They are kept inside the same Lua scripts that change a prediction's status (create, start,
cancel, hand-back, reap), so a count moves exactly when a prediction enters or leaves
``starting``, whatever races, cancels and requeues happen. The global depth is the sum over the
(few) families.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from shared.db import keys, lua


def counter_keys() -> list[str]:
    return [keys.queued_by_tenant(), keys.queued_by_family()]


class QueueFull(Exception):
    """Admitting the predictions would pass a cap; ``scope`` is "tenant" or "global"."""

    def __init__(self, scope: str, cap: int) -> None:
        super().__init__(f"{scope} queue cap of {cap} reached")
        self.scope = scope
        self.cap = cap


@dataclass(frozen=True)
class Depth:
    tenant: int
    families: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.families.values())


class QueuedCounters:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._admit = lua.register(redis, "queue_counters_admit")

    def admit(self, tenant: str, families: Sequence[str], tenant_cap: int, total_cap: int) -> int:
        """Count ``len(families)`` new queued predictions of ``tenant``, or raise ``QueueFull`` (counting none).

        Returns how many of the tenant's predictions were queued before these. More than a cap allows at all
        are refused by the smaller such cap, whatever is queued: no wait would ever admit them."""
        never = [(cap, scope) for scope, cap in (("tenant", tenant_cap), ("global", total_cap)) if len(families) > cap]
        if never:
            cap, scope = min(never)
            raise QueueFull(scope, cap)
        per_family = Counter(families)
        args: list[str | int] = [tenant, len(families), tenant_cap, total_cap]
        for family, count in per_family.items():
            args += [family, count]
        found: int = self._admit(keys=counter_keys(), args=args)
        if found == -1:
            raise QueueFull("tenant", tenant_cap)
        if found == -2:
            raise QueueFull("global", total_cap)
        return found

    def release(self, tenant: str, families: Sequence[str]) -> None:
        """Undo ``admit`` for predictions that were never stored."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.queued_by_tenant(), tenant, -len(families))
            for family, count in Counter(families).items():
                pipe.hincrby(keys.queued_by_family(), family, -count)
            pipe.execute()

    def depth(self, tenant: str) -> Depth:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.queued_by_tenant(), tenant)
            pipe.hgetall(keys.queued_by_family())
            mine, families = pipe.execute()
        return Depth(tenant=max(0, int(mine or 0)), families={k.decode(): max(0, int(v)) for k, v in families.items()})
