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

from shared.db import keys

# Prepended to a script whose KEYS[1] is the record and whose last two KEYS are the tenant and
# family counter hashes. queued_delta(delta) moves the record's tenant and family by ``delta``;
# counts that reach zero are dropped, so the hashes only name what is actually waiting.
LUA_QUEUED_DELTA = """
local function queued_bump(hash, field, delta)
  if redis.call('HINCRBY', hash, field, delta) <= 0 then redis.call('HDEL', hash, field) end
end
local function queued_delta(delta)
  local tenant = redis.call('HGET', KEYS[1], 'tenant')
  local family = redis.call('HGET', KEYS[1], 'queue')
  if tenant then queued_bump(KEYS[#KEYS - 1], cjson.decode(tenant), delta) end
  if family and cjson.decode(family) ~= '' then queued_bump(KEYS[#KEYS], cjson.decode(family), delta) end
end
"""

# KEYS[1]: tenant counters, KEYS[2]: family counters. ARGV[1]: tenant, ARGV[2]: how many, ARGV[3]:
# tenant cap, ARGV[4]: global cap, ARGV[5..]: family, count pairs. Takes room for all or none:
# returns the tenant's queued count before these (admitted, counted), -1 (over the tenant cap) or
# -2 (over the global cap).
_ADMIT = """
local wanted = tonumber(ARGV[2])
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if mine + wanted > tonumber(ARGV[3]) then return -1 end
local total = 0
for _, count in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(count) end
if total + wanted > tonumber(ARGV[4]) then return -2 end
redis.call('HINCRBY', KEYS[1], ARGV[1], wanted)
for i = 5, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], tonumber(ARGV[i + 1])) end
return math.max(mine, 0)
"""


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
        self._admit = redis.register_script(_ADMIT)

    def admit(self, tenant: str, families: Sequence[str], tenant_cap: int, total_cap: int) -> int:
        """Count ``len(families)`` new queued predictions of ``tenant``, or raise ``QueueFull`` (counting none).

        Returns how many of the tenant's predictions were queued before these."""
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
