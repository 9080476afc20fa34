"""Micro-batching: claim queued predictions that can share the running one's pipeline call.

When a worker starts a prediction it looks at what waits behind it on its queues (``QueuePeek``)
and claims, through each record's own lease (the same atomic start as a normal delivery),
queued predictions of the same model whose batch key matches, up to ``max_size`` in all. Their
Celery messages, delivered later, find them running or finished and do nothing. It waits for
more at most ``window_s``, and only while nothing else is queued: a GPU never idles for a batch
while other work waits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol

from shared.predictions.deadlines import passed
from shared.predictions.leases import Leases
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from worker.interrupts import HandedBack

# How many upcoming messages one look at the queue reads.
SCAN_LIMIT = 32


class BatchClaimer:
    """Claims the queued predictions that can join a running one's pipeline call (its batch-mates)."""

    def __init__(
        self,
        store: PredictionStore,
        leases: Leases,
        upcoming: Callable[[int], list[str]],
        max_size: int,
        window_s: float,
        poll_s: float = 0.005,
    ) -> None:
        self.store = store
        self.leases = leases
        self.upcoming = upcoming
        self.max_size = max_size
        self.window_s = window_s
        self.poll_s = poll_s

    def claim(
        self, leader: Prediction, key: Hashable, key_of: Callable[[Prediction], Hashable | None]
    ) -> list[tuple[Prediction, int]]:
        """Claim up to ``max_size - 1`` queued predictions batchable with ``leader``: ``(record, attempt)`` each."""
        taken: list[tuple[Prediction, int]] = []
        looked_at = {leader.id}
        other_work = False
        deadline = time.monotonic() + self.window_s
        while len(taken) + 1 < self.max_size:
            for prediction_id in self.upcoming(SCAN_LIMIT):
                if len(taken) + 1 >= self.max_size:
                    break
                if prediction_id in looked_at:
                    continue
                looked_at.add(prediction_id)
                candidate = self.store.get(prediction_id)
                if candidate is None or candidate.status is not Status.STARTING or passed(candidate.deadline):
                    continue  # one past its deadline is aborted by its own delivery (or the deadline job)
                if candidate.model != leader.model or key_of(candidate) != key:
                    other_work = True
                    continue
                attempt = self.leases.start(prediction_id)
                if attempt is not None:
                    taken.append((candidate, attempt))
            if other_work or time.monotonic() >= deadline:
                break
            time.sleep(self.poll_s)
        return taken


class BatchedPrediction(Protocol):
    """A prediction in a micro-batch, as ``BatchStep`` sees it (``worker.runner.RunningPrediction``)."""

    done: bool
    ctx: Any


class BatchStopped(Exception):
    """Every prediction of a batch was stopped (canceled, failed, lost its lease): the loop can end."""


class BatchStep:
    """The ``callback_on_step_end`` of a batched call: progress and interruption checks per prediction.

    A prediction that is canceled (or runs out of time, or loses its lease) is settled on the spot
    by ``stop`` and its rows' results are dropped; the others go on. Only a worker shutdown
    (``HandedBack``) or the last prediction stopping ends the loop.
    """

    def __init__(self, items: Sequence[BatchedPrediction], stop: Callable[[Any, Exception], object]) -> None:
        self.items = items
        self.stop = stop
        self.started = time.monotonic()

    def __call__(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        for item in self.items:
            if item.done:
                continue
            try:
                item.ctx.on_step(pipe, step, self.started)
            except HandedBack:
                raise
            except Exception as exc:
                self.stop(item, exc)
        if all(item.done for item in self.items):
            raise BatchStopped()
        return callback_kwargs
