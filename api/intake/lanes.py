"""Where create work runs: threads of its own, and a share of them per token.

A create validates its input and stages its images, and an image URL is fetched synchronously, for up
to ``KILN_IMAGE_FETCH_TIMEOUT_S``. Run on the event loop's default thread pool (40 threads, shared
with every synchronous read handler), 40 creates whose image URLs trickle one byte a second held
every thread, and another token's ``GET /v1/predictions`` waited seconds for one. So creates (single,
inline batches, deployments) run on their own limiter of ``KILN_INTAKE_THREADS`` threads, which reads
never wait for, and one token holds at most ``KILN_INTAKE_THREADS_PER_TOKEN`` of them at once: its
further creates wait for its own threads (on the event loop, holding no thread), so a token's slow
URLs hold nothing but that token's own slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


@dataclass
class _TokenLane:
    slots: anyio.Semaphore
    users: int = 0


@dataclass
class IntakeLanes:
    threads: int
    per_token: int
    # Built on first use: anyio's primitives belong to the event loop that makes them.
    _limiter: anyio.CapacityLimiter | None = None
    _lanes: dict[str, _TokenLane] = field(default_factory=dict)

    async def run(self, tenant: str, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on an intake thread, once one of ``tenant``'s slots is free."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        lane = self._lanes.get(tenant)
        if lane is None:
            lane = self._lanes[tenant] = _TokenLane(anyio.Semaphore(self.per_token))
        lane.users += 1
        try:
            async with lane.slots:
                return await anyio.to_thread.run_sync(partial(work, *args), limiter=self._limiter)
        finally:
            lane.users -= 1
            if lane.users == 0:  # a token with nothing in flight keeps no lane: one per active token
                del self._lanes[tenant]

    def in_flight(self, tenant: str) -> int:
        """The token's creates running or waiting for a slot (tests, metrics)."""
        lane = self._lanes.get(tenant)
        return 0 if lane is None else lane.users
