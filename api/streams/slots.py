"""At most ``KILN_MAX_OPEN_STREAMS_PER_TENANT`` streams and ``Prefer: wait`` creates open at once per
token, counted across every API process.

Each open one holds a slot: a member of the tenant's sorted set in Redis (``keys.open_streams``)
scored by when its lease lapses. The process that holds slots renews their leases in the
background, so the slots of a process that died lapse by themselves; releasing never awaits
(it runs when a stream is cancelled), the process removes released slots right after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import redis.asyncio
from redis.exceptions import RedisError

from api.errors import ProblemError
from shared.db import keys, lua
from shared.predictions.record import new_id

log = logging.getLogger(__name__)

# A held slot's lease, renewed every third of it while the stream or wait is open.
LEASE_S = 30
# A refused client may try again after this long: streams and waits of a tenant end all the time.
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Slot:
    tenant: str
    member: str


class StreamSlots:
    """The per-token cap on open streams and waits (``KILN_MAX_OPEN_STREAMS_PER_TENANT``)."""

    def __init__(self, client: redis.asyncio.Redis, cap: int, lease_s: float = LEASE_S) -> None:
        self.cap = cap
        self.lease_ms = int(lease_s * 1000)
        self._client = client
        self._acquire = lua.register(client, "stream_slots_acquire")
        self._renew = lua.register(client, "stream_slots_renew")
        self._held: set[Slot] = set()
        self._released: asyncio.Queue[Slot] = asyncio.Queue()
        self._keeper: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    async def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep(), name="kiln-stream-slots")

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        with contextlib.suppress(RedisError, OSError):
            await self._remove([*self._held, *self._drain()])

    @asynccontextmanager
    async def hold(self, tenant: str) -> AsyncIterator[Slot]:
        """A slot for the block, or a 429 problem (with ``Retry-After``) when the tenant holds them all."""
        slot = Slot(tenant, new_id())
        held_before = int(
            await self._acquire(keys=[keys.open_streams(tenant)], args=[slot.member, self.cap, self.lease_ms])
        )
        if held_before >= self.cap:
            raise ProblemError(
                429,
                f"this token has {held_before} streams and waiting requests (Prefer: wait) open, the most allowed "
                f"(KILN_MAX_OPEN_STREAMS_PER_TENANT={self.cap}); close one, or poll GET /v1/predictions/{{id}}",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._held.add(slot)
        try:
            yield slot
        finally:
            # No await: this runs when a stream is cancelled too. The keeper removes it right away.
            self._held.discard(slot)
            self._released.put_nowait(slot)

    def _drain(self) -> list[Slot]:
        drained = []
        while not self._released.empty():
            drained.append(self._released.get_nowait())
        return drained

    async def _remove(self, slots: list[Slot]) -> None:
        if not slots:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for slot in slots:
                pipe.zrem(keys.open_streams(slot.tenant), slot.member)
            await pipe.execute()

    async def _keep(self) -> None:
        """Remove released slots as they come, and renew the held ones every third of a lease."""
        loop = asyncio.get_running_loop()
        renew_every = self.lease_ms / 3000
        next_renewal = loop.time() + renew_every
        while True:
            released: list[Slot] = []
            with contextlib.suppress(TimeoutError):
                released.append(await asyncio.wait_for(self._released.get(), max(0.0, next_renewal - loop.time())))
            try:
                await self._remove(released + self._drain())
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + renew_every
                    held = list(self._held)
                    if held:
                        await self._renew(
                            keys=[keys.open_streams(slot.tenant) for slot in held],
                            args=[self.lease_ms, *(slot.member for slot in held)],
                        )
            except (RedisError, OSError) as exc:
                # Released slots lapse with their lease; held ones are renewed at the next try.
                log.warning("open-stream slots not updated in Redis: %s", exc)
