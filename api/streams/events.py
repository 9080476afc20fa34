"""Prediction events for every waiter of one API process, over one Redis pub/sub connection.

``Prefer: wait`` creates and SSE streams wait for a prediction to change. A Redis connection of its
own per waiter would let enough open streams from one tenant take every connection from everyone's
requests, so one listener per process subscribes to the channels that someone waits on and wakes
the in-process subscribers of each; waiting costs no connection, and the number of waits is
bounded per tenant (``api.streams.slots``), not by Redis.

A subscriber is woken on every event of its prediction and re-reads what it needs. Events can be
missed (published before the subscription took effect, lost while Redis reconnects), so waiters
also re-read every ``RECHECK_S``; after a reconnect, every subscriber is woken at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from shared.db import keys
from shared.db.client import RedisTarget, connect_async
from shared.predictions.record import new_id

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis

log = logging.getLogger(__name__)

# A waiter re-reads the prediction at least this often, in case an event went missing.
RECHECK_S = 5.0
# How long subscribing waits for Redis to confirm before going on (the re-checks cover the rest).
CONFIRM_TIMEOUT_S = 5.0
# After the listener lost Redis, it tries again this often.
RECONNECT_DELAY_S = 0.5


class Subscription:
    """One waiter's view of a prediction's events: woken on each, or when events may have been lost."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()

    async def wait(self, timeout_s: float) -> None:
        """Until the prediction may have changed, or ``timeout_s`` passes."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        self._changed.clear()


class EventHub:
    """The process's one pub/sub connection and the subscribers of each prediction's channel."""

    @classmethod
    def connect(cls, where: str | RedisTarget) -> EventHub:
        """A hub on its own client of the Redis at a URL or behind sentinels (``shared.db.client``)."""
        return cls(connect_async(where, socket_timeout=None))

    def __init__(self, client: AsyncRedis) -> None:
        # A client of its own, with no read timeout: the listener blocks until a message comes.
        self._client = client
        self._pubsub = self._client.pubsub()
        # A channel of this process's own keeps the connection subscribed while nobody waits.
        self._home = f"{keys.PREFIX}:api-events:{new_id()}".encode()
        self._subscribers: dict[bytes, set[Subscription]] = {}
        # Channels subscribed on the connection, and the confirmation each subscriber waits for.
        self._live: dict[bytes, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def channel_count(self) -> int:
        """Prediction channels subscribed now (one per prediction someone waits on)."""
        return len(self._subscribers)

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="kiln-event-hub")

    async def close(self) -> None:
        for task in [self._listener, *self._pending]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                    await task
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

    @asynccontextmanager
    async def subscribe(self, prediction_id: str) -> AsyncIterator[Subscription]:
        """A subscription to the prediction's events for the block; on entry, Redis has confirmed
        it (or ``CONFIRM_TIMEOUT_S`` passed), so a state read in the block misses no later event."""
        channel = keys.prediction_events(prediction_id).encode()
        subscription = Subscription()
        self._subscribers.setdefault(channel, set()).add(subscription)
        try:
            async with self._lock:
                confirmed = self._live.get(channel)
                if confirmed is None:
                    confirmed = self._live[channel] = asyncio.get_running_loop().create_future()
                    try:
                        await self._pubsub.subscribe(channel)
                    except BaseException:
                        self._live.pop(channel, None)
                        raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(confirmed), CONFIRM_TIMEOUT_S)
            yield subscription
        finally:
            # No await here: this runs when a stream is cancelled, too.
            waiting = self._subscribers.get(channel, set())
            waiting.discard(subscription)
            if not waiting:
                self._subscribers.pop(channel, None)
                task = asyncio.get_running_loop().create_task(self._unsubscribe(channel))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _unsubscribe(self, channel: bytes) -> None:
        async with self._lock:
            if channel in self._subscribers or channel not in self._live:
                return  # someone subscribed again meanwhile
            self._live.pop(channel)
            try:
                await self._pubsub.unsubscribe(channel)
            except (RedisError, OSError) as exc:
                log.debug("unsubscribing %s failed (%s); it goes with the connection", channel, exc)

    async def _listen(self) -> None:
        while True:
            try:
                if not self._pubsub.subscribed:
                    async with self._lock:
                        await self._pubsub.subscribe(self._home)
                message = await self._pubsub.get_message(timeout=RECHECK_S)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("prediction events: Redis unavailable (%s); waiters re-read as they can", exc)
                self._wake_everyone()
                await asyncio.sleep(RECONNECT_DELAY_S)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, object]) -> None:
        channel = message.get("channel")
        if not isinstance(channel, bytes):
            return
        if message["type"] == "subscribe":
            confirmed = self._live.get(channel)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            if channel == self._home:
                self._wake_everyone()  # (re)connected: events may have been missed meanwhile
        elif message["type"] == "message":
            for subscription in self._subscribers.get(channel, ()):
                subscription.notify()

    def _wake_everyone(self) -> None:
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.notify()
