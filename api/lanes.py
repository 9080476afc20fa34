"""Where work that may wait on someone else runs: threads of its own, apart from the ones reads use, and a
share of them per token. Creates, uploads and requests that wait for S3 each have their own ``Lanes``.

A create validates its input and stages its images, and an image URL is fetched synchronously, for up
to ``KILN_IMAGE_FETCH_TIMEOUT_S``. Run on the event loop's default thread pool (40 threads, shared
with every synchronous read handler), 40 creates whose image URLs trickle one byte a second held
every thread, and another token's ``GET /v1/predictions`` waited seconds for one. So creates (single,
inline batches, deployments) run on their own limiter of ``KILN_INTAKE_THREADS`` threads, which reads
never wait for, and one token holds at most ``KILN_INTAKE_THREADS_PER_TOKEN`` of them at once: its
further creates wait for its own threads (on the event loop, holding no thread), so a token's slow
URLs hold nothing but that token's own slots.

Uploads (``POST /v1/files``, up to ``KILN_FILE_MAX_BYTES`` each) have lanes of their own, held from the first
byte of the body read to the file stored (``slot``, ``on_thread``): one token's uploads take at most
``KILN_UPLOADS_PER_TOKEN`` of ``KILN_UPLOAD_THREADS`` at once, and never the threads reads run on.

Requests that wait for S3 have lanes of their own too, ``KILN_STORAGE_THREADS`` threads of which the data of one
owner takes at most ``KILN_STORAGE_THREADS_PER_TOKEN``: downloads (``api.signed_access.stream_stored``: the open,
then each chunk) and deletes of predictions' data, batches' data and files.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
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
class Lanes:
    threads: int
    per_token: int
    # Built on first use: anyio's primitives belong to the event loop that makes them.
    _limiter: anyio.CapacityLimiter | None = None
    _lanes: dict[str, _TokenLane] = field(default_factory=dict)

    async def run(self, tenant: str, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on an intake thread, once one of ``tenant``'s slots is free."""
        async with self.slot(tenant):
            return await self.on_thread(work, *args)

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        """Holds one of ``tenant``'s slots, waiting for one (on the event loop, holding no thread)."""
        lane = self._lanes.get(tenant)
        if lane is None:
            lane = self._lanes[tenant] = _TokenLane(anyio.Semaphore(self.per_token))
        lane.users += 1
        try:
            async with lane.slots:
                yield
        finally:
            lane.users -= 1
            if lane.users == 0:  # a token with nothing in flight keeps no lane: one per active token
                del self._lanes[tenant]

    async def on_thread(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` on one of the lanes' threads (within a ``slot``)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.threads)
        return await anyio.to_thread.run_sync(partial(work, *args), limiter=self._limiter)

    def in_flight(self, tenant: str) -> int:
        """The token's creates running or waiting for a slot (tests, metrics)."""
        lane = self._lanes.get(tenant)
        return 0 if lane is None else lane.users
