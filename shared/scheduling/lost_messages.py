"""Sending again the Celery message of a queued prediction whose message was lost.

kombu's Redis transport pops a message with ``BRPOP`` before it records it as unacknowledged, so a
reply lost on a broken connection (a Redis failover) loses the message: its prediction would stay
queued (``starting``) for good, nobody noticing (docs/multi-machine.md). Kiln therefore keeps a
waiting index (``keys.queued_waiting``): every queued prediction whose message was sent, scored by
when. An entry is added in the transaction that writes the message (``mark_sent_in_pipeline``: a
create, the dispatcher's release of a batch or low item; a batch item still in the dispatcher's own
lists has none) or, for a requeue, by the status script that puts the prediction back, before its
message is sent, so a process dying in between leaves it here too. The status scripts remove it when
the prediction leaves the queue (started, canceled, aborted, failed).

``LostMessages.resend`` (a maintenance job of every worker) claims the entries older than
``GRACE_S`` (the claim moves each a grace ahead, so concurrent workers take different ones) and
sends the message again, on the queue and priority step its record names, for each prediction
still queued whose message is presumably lost: its queue line's ``head`` (the highest started
ticket, ``shared.scheduling.queue_lines``; per tenant in a round-robin line) passed its ticket, so
something queued after it in the same first-come list already started, or Celery's lists of its
line and of every line served before it are empty, so nothing it waits behind is left. One not
queued any more is dropped; one legitimately waiting behind others stays, checked again a grace
later. A message sent again waits at the back of its list, behind tickets its line's head has not
reached yet: the script that sends it (``lost_messages_resend.lua``) marks the record with the last
ticket its line had issued (``queue_resent_behind``, dropped on a requeue), and only a ticket past
that one starting counts as the line passing it, so a prediction is not sent again each grace while
it waits its new turn. A message sent twice is harmless: the second delivery finds the prediction started or ended
and its ``leases_start`` claim returns nothing (``worker.runner``), so a false alarm (a worker that
popped the message and is slow to claim it) costs a message, never a second run.

Cost: one sorted-set entry per queued prediction whose message was sent, about 120 bytes of Redis
(none for a batch item in the dispatcher's lists: it is filed when released), a ``ZREM`` per start,
and for the sweep a claim plus three pipelined round trips per hundred entries due.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline

from shared.db import keys, lua
from shared.db.client import as_text
from shared.predictions.status import Status
from shared.scheduling import queues
from shared.scheduling.queue_lines import lines_before
from shared.scheduling.task_messages import PredictMessages

log = logging.getLogger(__name__)

# How long a queued prediction's message may go unanswered before it is checked: well past a
# worker's wait for a record a failover took back (``worker.runner.RECORD_WAIT_S``) and the moment
# several workers start predictions out of ticket order. Read at each sweep, so tests may set it.
GRACE_S = 60.0
# Entries claimed at once, and at most how many such claims one sweep makes: every queued prediction
# is looked at about once a grace, so a sweep every 5 s on each worker keeps up with a backlog of
# tens of thousands per worker (docs/multi-machine.md).
SWEEP_LIMIT = 200
SWEEP_ROUNDS = 10

_FIELDS = ["status", "queue", "tenant", "queue_line", "queue_ticket", "queue_resent_behind"]
_QUEUED = json.dumps(Status.STARTING.value).encode()


def mark_sent_in_pipeline(pipe: Pipeline, prediction_ids: Sequence[str]) -> None:
    """File ``prediction_ids`` in the waiting index, in the caller's transaction: the one that writes
    their Celery messages."""
    if prediction_ids:
        now = time.time()
        pipe.zadd(keys.queued_waiting(), dict.fromkeys(prediction_ids, now))


@dataclass(frozen=True)
class _Queued:
    """A claimed entry whose record is still queued: where its message goes, and its ticket."""

    prediction_id: str
    family: str
    line: int
    tenant: str
    # Its ticket, or, once its message was sent again, the last ticket its line had issued then.
    behind: int | None

    def _field(self, name: str) -> str:
        return f"{name}:{self.tenant}" if self.line in queues.ROUND_ROBIN_STEPS else name

    def head_field(self) -> str:
        """The field of its line's hash holding the highest started ticket it is compared with."""
        return self._field("head")

    def enq_field(self) -> str:
        """The field of its line's hash counting the tickets issued (to its tenant, in a round-robin line)."""
        return self._field("enq")

    def lists_ahead(self) -> list[str]:
        """Celery's lists of its line and of the lines served before it."""
        lists = queues.priority_lists(self.family)
        return [lists[step] for step in [*lines_before(self.line), self.line]]


def _queued(prediction_id: str, fields: Sequence[bytes | None]) -> _Queued | None:
    """The entry if its record is queued on a family's queue (None: not queued, or no record)."""
    status, family, tenant, line, ticket, resent_behind = fields
    if status != _QUEUED or family is None:
        return None
    queue = json.loads(family)
    if not isinstance(queue, str) or not queue:
        return None
    found_line = json.loads(line) if line is not None else None
    numbers = [json.loads(raw) if raw is not None else None for raw in (ticket, resent_behind)]
    behind = [number for number in numbers if isinstance(number, int)]
    return _Queued(
        prediction_id,
        queue,
        found_line if isinstance(found_line, int) else queues.PRIORITY_REQUEUE,
        json.loads(tenant) if tenant is not None else "",
        max(behind) if behind else None,
    )


class LostMessages:
    def __init__(self, redis: Redis, messages: PredictMessages) -> None:
        self.redis = redis
        self.messages = messages
        self._claim = lua.register(redis, "claim_due")
        self._resend = lua.register(redis, "lost_messages_resend")

    def resend(self) -> int:
        """Claim the entries due and send the message again for each prediction presumably lost, a
        claim of ``SWEEP_LIMIT`` at a time, ``SWEEP_ROUNDS`` at most; returns how many were sent."""
        sent = 0
        for _ in range(SWEEP_ROUNDS):
            claimed = [
                as_text(i)
                for i in self._claim(keys=[keys.queued_waiting()], args=[time.time() - GRACE_S, GRACE_S, SWEEP_LIMIT])
            ]
            sent += self._check(claimed)
            if len(claimed) < SWEEP_LIMIT:
                break
        return sent

    def _check(self, claimed: list[str]) -> int:
        """Drop, keep or send again each claimed entry; how many were sent."""
        if not claimed:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in claimed:
                pipe.hmget(keys.prediction(prediction_id), _FIELDS)
            records = pipe.execute()
        found = [(i, _queued(i, fields)) for i, fields in zip(claimed, records, strict=True)]
        self._drop([i for i, queued in found if queued is None])
        return len(self._send(self._lost([queued for _, queued in found if queued is not None])))

    def _lost(self, waiting: list[_Queued]) -> list[_Queued]:
        """Those whose line's head passed their ticket or whose lists ahead are all empty."""
        if not waiting:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for queued in waiting:
                pipe.hget(keys.queue_line(queued.family, str(queued.line)), queued.head_field())
                for list_key in queued.lists_ahead():
                    pipe.llen(list_key)
            replies = iter(pipe.execute())
        lost = []
        for queued in waiting:
            head = next(replies)
            lengths = [next(replies) for _ in queued.lists_ahead()]
            passed = head is not None and queued.behind is not None and int(head) > queued.behind
            if passed or not any(lengths):
                lost.append(queued)
        return lost

    def _send(self, lost: list[_Queued]) -> list[_Queued]:
        """Push their messages again, on the step their record names, each if still queued
        (``lost_messages_resend.lua``: it marks the record with where its line stood); those sent."""
        if not lost:
            return []
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for queued in lost:
                list_key, message = self.messages.render(queued.prediction_id, queued.family, queued.line)
                self._resend(
                    keys=[
                        keys.prediction(queued.prediction_id),
                        keys.queued_waiting(),
                        list_key,
                        keys.queue_line(queued.family, str(queued.line)),
                    ],
                    args=[queued.prediction_id, message, queued.enq_field(), now],
                    client=pipe,
                )
            sent = [queued for queued, pushed in zip(lost, pipe.execute(), strict=True) if pushed]
        for queued in sent:
            log.warning(
                "prediction %s: queued for over %.0f s and its message presumably lost; sent again on %s step %d",
                queued.prediction_id,
                GRACE_S,
                queued.family,
                queued.line,
            )
        return sent

    def _drop(self, prediction_ids: list[str]) -> None:
        """Remove the entries of predictions no longer queued, each checked again in the script that
        removes it: one requeued meanwhile (its status script filed it again) keeps its entry."""
        if not prediction_ids:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                self._resend(
                    keys=[
                        keys.prediction(prediction_id),
                        keys.queued_waiting(),
                        keys.queued_waiting(),
                        keys.queued_waiting(),
                    ],
                    args=[prediction_id, "", "", 0],
                    client=pipe,
                )
            pipe.execute()
