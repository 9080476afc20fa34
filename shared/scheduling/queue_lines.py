"""Queue positions: how many queued predictions of its model family start before a given one, read with a
few Redis operations per prediction, never by scanning a queue.

A family's queue is served line by line: Celery's priority steps (``queues.PRIORITY_STEPS``, each a
first-come list a worker pops only when the steps before it are empty), two of them fed by Kiln's
dispatcher, which takes tenants in turn (``queues.ROUND_ROBIN_STEPS``: ``/v1/batches`` items, and the
low-priority lane). Each line hands out tickets, counting up, in the order its predictions are queued:
in the transaction that stores and enqueues them (``enter_in_pipeline``), and, for a requeue, in the
status script that puts a prediction back (``queue_lines.lua``, included by ``set_status.lua``). The
status scripts count every ticket that leaves: ``left`` for all, ``head`` for the highest one that
started, and a sorted set of the tickets above ``head`` that left without starting (a queued cancel or
abort). A round-robin line keeps these per tenant, and the dispatcher marks each tenant's last
released ticket (``rel:<tenant>``) when it moves an item onto Celery.

A prediction's ``queue_position`` (``queue_position.lua``) is then

- everything waiting in the lines served before its own (``enq - left`` of each: exact), plus
- in a first-come line: the tickets between ``head`` and its own, less those that left without
  starting (exact while the line starts in ticket order, which one list popped from its end does);
- in a round-robin line: the same count ``k`` among its own tenant's tickets; then, if the dispatcher
  has not released it yet, the messages already released for the other tenants, and one item of
  another tenant per turn the ring takes before its own: each other tenant of the ring once per ticket
  of its own tenant still listed ahead of it, and the tenants ahead of its tenant in the ring once
  more (``(tenants - 1) * listed + place``), at most as many as the other tenants have unreleased.
  Exact with one tenant in the lane, for a newcomer (the ring serves it next), and whenever every
  other tenant has enough waiting to take all its turns; otherwise an upper bound (a tenant with fewer
  waiting takes fewer turns). Once released it counts only its own tenant's tickets ahead of it (the
  lane's other released messages, at most ``KILN_DISPATCH_AHEAD`` - 1, may be ahead too).

So 0 means "next to start in its family". The number counts down by one as each prediction ahead of
it starts or leaves; it rises only when work that is served first arrives (a single create ahead of a
batch item, a normal prediction ahead of a low one, a new tenant's turn in a round-robin lane), which
is the truth, not noise. What else it approximates: micro-batching and several workers start
predictions a moment out of ticket order (counted from the highest started); with fewer
``KILN_DISPATCH_AHEAD`` than workers a worker may take an inline batch item while the dispatcher
refills (the dispatched line is counted as served first); a requeue's ticket is taken a moment before
its Celery message is sent; predictions stored before queue lines existed have no ticket (``null``)
and are not counted.

Cost: one script per prediction: a hash read per line served before its own, a ``ZCOUNT`` in the
few skipped tickets, and in a round-robin line an ``LPOS`` over the lane's ring (its tenants, not its
items): the same at 100 or 100,000 queued; a page of a list is one pipelined round trip. Each create
adds one ``HINCRBY`` per line it uses and two small fields per record (about 30 bytes); each status
change out of the queue a few hash operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio
from redis import Redis
from redis.client import Pipeline

from shared.db import keys, lua
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.scheduling import queues


def lines_before(line: int) -> list[int]:
    """The lines (priority steps) of a family that a worker serves before ``line``."""
    return [step for step in queues.PRIORITY_STEPS if step < line]


@dataclass(frozen=True)
class Ticket:
    """Where a queued prediction waits: its family, line and tenant, and its number in that line."""

    family: str
    line: int
    tenant: str
    number: int

    @classmethod
    def of(cls, prediction: Prediction) -> Ticket | None:
        """The ticket of a queued prediction; None once it started or ended, or if it holds none."""
        if prediction.status is not Status.STARTING or not prediction.queue:
            return None
        if prediction.queue_line is None or prediction.queue_ticket is None:
            return None
        return cls(prediction.queue, prediction.queue_line, prediction.tenant, prediction.queue_ticket)

    def script_keys(self) -> list[str]:
        """KEYS of ``queue_position.lua``: in a round-robin line, the dispatcher lane's ring and the Celery
        list it releases into."""
        if self.line not in queues.ROUND_ROBIN_STEPS:
            return []
        ring = keys.dispatch_tenants(queues.dispatch_lane(self.family, self.line))
        return [ring, queues.priority_lists(self.family)[self.line]]

    def script_args(self) -> list[str | int]:
        """ARGV of ``queue_position.lua``."""
        return [self.family, str(self.line), self.tenant, self.number, *(str(line) for line in lines_before(self.line))]


def _number(field: bytes | None) -> int | None:
    """A record's JSON integer field (``null`` or absent: None)."""
    return int(field) if field is not None and field.isdigit() else None


def _position(found: int | bytes | None) -> int | None:
    number = int(found) if found is not None else -1
    return number if number >= 0 else None


class QueueLines:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._enter = lua.register(redis, "queue_lines_enter")
        self._position = lua.register(redis, "queue_position")

    def enter_in_pipeline(
        self, pipe: Pipeline, family: str, line: int, tenant: str, prediction_ids: Sequence[str]
    ) -> None:
        """Tickets of ``family``'s ``line`` for ``prediction_ids`` (one tenant's, in the order they are
        queued), written on their records, in the caller's transaction (the one that queues them)."""
        if prediction_ids:
            self._enter(args=[family, str(line), tenant, *prediction_ids], client=pipe)

    def read_tickets(self, predictions: Sequence[Prediction]) -> None:
        """Set each prediction's ``queue_line`` and ``queue_ticket`` as its record holds them (the script
        that queued it wrote them there), in one round trip: a create's answer shows its position."""
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction in predictions:
                pipe.hmget(keys.prediction(prediction.id), ["queue_line", "queue_ticket"])
            found = pipe.execute()
        for prediction, (line, ticket) in zip(predictions, found, strict=True):
            prediction.queue_line = _number(line)
            prediction.queue_ticket = _number(ticket)

    def position(self, prediction: Prediction) -> int | None:
        """``queue_position``: how many of its family's queued predictions start before it (0: it is
        next); None when it is not queued."""
        return self.positions([prediction])[0]

    def positions(self, predictions: Sequence[Prediction]) -> list[int | None]:
        """``position`` of each, in one round trip (none when none is queued)."""
        tickets = [Ticket.of(p) for p in predictions]
        if not any(tickets):
            return [None] * len(tickets)
        with self.redis.pipeline(transaction=False) as pipe:
            for ticket in tickets:
                if ticket is not None:
                    self._position(keys=ticket.script_keys(), args=ticket.script_args(), client=pipe)
            found = iter(pipe.execute())
        return [_position(next(found)) if ticket is not None else None for ticket in tickets]


async def queue_position(client: redis.asyncio.Redis, ticket: Ticket) -> int | None:
    """``QueueLines.position`` for the event loop (an asyncio client), given the prediction's ticket."""
    script = lua.register(client, "queue_position")
    return _position(await script(keys=ticket.script_keys(), args=ticket.script_args()))
