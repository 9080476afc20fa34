"""Acknowledged means replicated: a write is confirmed only once enough replicas hold it.

Redis replicates asynchronously: a create answered 201 just before the primary dies can be missing
from the replica Sentinel promotes. With ``KILN_REDIS_MIN_REPLICAS_ACK=N`` Kiln confirms with
``WAIT N timeout`` before it answers a create (and before it records a terminal transition's
``completed`` webhook).

``WAIT`` waits for the writes made on *its own connection*, and a pool hands each command whichever
connection is free. So the confirmation writes a fence first (``INCR`` of one counter) and sends
``WAIT`` after it on the same connection, in one pipeline: the fence is later than every write
already answered on any connection (the primary's replication offset only grows), so once replicas
hold it they hold those too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared.db import keys

log = logging.getLogger(__name__)


class NotReplicated(Exception):
    """Fewer replicas than required confirmed the writes within the timeout, or what was written is not on
    the primary any more (a failover lost it)."""

    def __init__(self, confirmed: int, required: int) -> None:
        super().__init__(f"{confirmed} of the {required} required replicas confirmed the write")
        self.confirmed = confirmed
        self.required = required


@dataclass(frozen=True)
class Replication:
    """How many replicas must confirm (0: none, nothing is waited for) and for how long at most."""

    client: redis.Redis
    replicas: int
    timeout_s: float

    def confirm(self, still_there: Callable[[], bool] | None = None) -> None:
        """Return once ``replicas`` replicas hold every write answered so far; ``NotReplicated`` after the timeout.

        If the primary died between the writes and the ``WAIT``, the client retries the fence on the promoted
        replica, where the ``WAIT`` confirms that server's writes, not the lost ones: ``still_there`` then
        reads back what was written (after the ``WAIT``, so on a primary whose replicas hold it)."""
        if self.replicas <= 0:
            return
        with self.client.pipeline(transaction=False) as pipe:
            pipe.incr(keys.replication_fence())
            pipe.wait(self.replicas, max(1, round(self.timeout_s * 1000)))
            _, confirmed = pipe.execute()
        if confirmed < self.replicas:
            raise NotReplicated(int(confirmed), self.replicas)
        if still_there is not None and not still_there():
            raise NotReplicated(0, self.replicas)

    def settle(self, tries: int = 3) -> bool:
        """``confirm``, a few times: for what is done whatever the answer (a terminal transition already
        made). False, logged, when the replicas never confirmed."""
        last: NotReplicated | None = None
        for _ in range(tries):
            try:
                self.confirm()
                return True
            except NotReplicated as exc:
                last = exc
        log.warning("writes not confirmed by the replicas after %d tries: %s", tries, last)
        return False
