"""How a prediction ends, in one place, whichever path ends it.

Three paths end predictions, each with its own atomic status change (they differ in what must be
checked in the same step, all against the one state table in ``shared.predictions.status``):

- a worker's outcome (``finish``): succeeded, failed or canceled, only while its attempt is current;
- a user's cancel of a queued prediction (``cancel``, from the API), or its deadline (``expire``);
- the lease reaper failing a prediction whose workers kept dying (``reap``, a maintenance job).

What follows a terminal status is ``_ended``, for all three: its data is scheduled for deletion
after retention, it is counted in ``kiln_predictions_finished``, and its ``completed`` webhook is
recorded. Nothing else in Kiln does any of the three (a test checks it).

An ending is never left without its follow-up: the status change files the prediction in an ended set
in the same atomic step (``set_status.lua``), and ``_ended`` takes it out only once retention and the
``completed`` message are recorded (and, with ``KILN_REDIS_MIN_REPLICAS_ACK``, held by the replicas).
A process killed in between, or a failover that lost the outbox write, leaves it there, and
``follow_up_missed`` (a maintenance job) does the follow-up again; the outbox records one ``completed``
message per prediction, so a follow-up done twice sends nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from shared.db.replication import Replication
from shared.predictions.leases import Leases
from shared.predictions.record import Prediction, utcnow
from shared.predictions.status import TERMINAL, Status
from shared.predictions.store import PredictionStore
from shared.runtime import metrics

log = logging.getLogger(__name__)

# An ending still in the ended set this long after it happened had its follow-up missed: ``_ended``
# takes seconds at most, even through a failover (a few WAITs of KILN_REDIS_REPLICA_ACK_TIMEOUT_S).
FOLLOW_UP_AFTER_S = 30.0


class Notifier(Protocol):
    """Records a webhook event of a prediction (``shared.webhooks.outbox.WebhookNotifier``)."""

    def notify(self, prediction: Prediction, event: str) -> object: ...

    def completed_recorded(self, prediction_ids: Sequence[str]) -> set[str]:
        """Which of these predictions have their ``completed`` message recorded."""
        ...


class PredictionLifecycle:
    def __init__(self, store: PredictionStore, notifier: Notifier, replication: Replication | None = None) -> None:
        self.store = store
        self.notifier = notifier
        # With KILN_REDIS_MIN_REPLICAS_ACK, a terminal status is on the replicas before its webhook is recorded.
        self.replication = replication

    def finish(
        self,
        prediction: Prediction,
        status: Status,
        *,
        attempt: int | None = None,
        predict_time: float | None = None,
        **fields: object,
    ) -> bool:
        """End ``prediction`` in the terminal ``status`` with ``fields`` (``output``, ``error``), if
        ``attempt`` is still the current one. False when it had already ended or moved on (another
        worker took over, a duplicate delivery)."""
        if predict_time is not None:
            fields["predict_time"] = predict_time
        if not self.store.transition(prediction.id, status, if_attempt=attempt, completed_at=utcnow(), **fields):
            log.warning(
                "prediction %s could not move to %s: it is %s",
                prediction.id,
                status.value,
                self.store.status(prediction.id),
            )
            return False
        log.info("prediction %s %s", prediction.id, status.value)
        self._ended([prediction], status, predict_time)
        return True

    def cancel(self, prediction: Prediction) -> Status | None:
        """A user's cancel: a queued prediction ends ``canceled`` now; a running one is flagged, and
        its worker ends it (``finish``) within one denoising step. Returns the status it had."""
        return self.cancel_many([prediction])[0]

    def cancel_many(self, predictions: Sequence[Prediction]) -> list[Status | None]:
        """``cancel`` for each (a batch's items: ``api.views.batches``), with one Redis round trip for
        all their status changes and one for their retention. Returns the status each had."""
        found = self.store.request_cancel_many([p.id for p in predictions])
        self._ended([p for p, was in zip(predictions, found, strict=True) if was is Status.STARTING], Status.CANCELED)
        return found

    def expire(self, prediction: Prediction) -> Status | None:
        """Its deadline (``Cancel-After``) passed: a queued prediction ends ``aborted`` now (it never
        runs); a running one is flagged and ends ``canceled`` within one step. Returns the status it had."""
        found = self.store.request_cancel(prediction.id, queued_ends=Status.ABORTED)
        if found is Status.STARTING:
            log.info("prediction %s aborted: its deadline passed before it started", prediction.id)
            self._ended([prediction], Status.ABORTED)
        return found

    def reap(self, leases: Leases, prediction_id: str, max_attempts: int) -> tuple[Status, Prediction] | None:
        """Requeue a prediction whose lease lapsed, or end it ``failed`` after ``max_attempts``
        (``Leases.reap``). Returns the outcome and the record, or None when there was nothing to do
        (renewed or finished meanwhile, or gone)."""
        outcome = leases.reap(prediction_id, max_attempts)
        prediction = self.store.get(prediction_id) if outcome else None
        if outcome is None or prediction is None:
            return None
        if outcome is Status.FAILED:
            log.error("prediction %s failed: %s", prediction_id, prediction.error)
            self._ended([prediction], Status.FAILED)
        return outcome, prediction

    def follow_up_missed(self, after_s: float = FOLLOW_UP_AFTER_S, limit: int = 100) -> int:
        """Follow up endings that happened over ``after_s`` ago and are still in the ended set: their
        process died, or a failover lost what it recorded. Returns how many were followed up."""
        claimed = self.store.claim_ended(time.time() - after_s, lease_s=after_s + FOLLOW_UP_AFTER_S, limit=limit)
        if not claimed:
            return 0
        ended = [p for p in self.store.get_many(claimed) if p.status in TERMINAL]
        # Gone (past record retention) or not ended after all: nothing to follow up.
        self.store.forget_ended(sorted(set(claimed) - {p.id for p in ended}))
        if ended:
            log.warning("following up %d endings whose follow-up was missed: %s", len(ended), [p.id for p in ended])
            self._follow_up(ended)
        return len(ended)

    def _ended(self, predictions: Sequence[Prediction], status: Status, predict_time: float | None = None) -> None:
        """What follows every terminal transition, once: retention, metrics, the ``completed`` webhook.

        The webhook is recorded once the replicas required hold the terminal status (a few tries; if they
        never confirm it, it is recorded anyway: a client that is never told would be worse than one told
        of an ending a failover could still undo)."""
        if (replication := self._waited_for()) is not None:
            replication.settle()
            # A terminal status a failover undid is not announced: the prediction runs (or is reaped) again,
            # and that ending records the one completed webhook.
            held = {p.id for p in self.store.get_many([p.id for p in predictions]) if p.status is status}
            predictions = [p for p in predictions if p.id in held]
        for prediction in predictions:
            metrics.record_finished(prediction.model, status.value, predict_time)
        self._follow_up(predictions)

    def _waited_for(self) -> Replication | None:
        """The replication to confirm with; None when no replicas are waited for."""
        return self.replication if self.replication is not None and self.replication.replicas > 0 else None

    def _follow_up(self, predictions: Sequence[Prediction]) -> None:
        """Schedule retention and record the ``completed`` webhook, then take the predictions out of the
        ended set: those whose follow-up is confirmed held (``_held``)."""
        self.store.schedule_retention([p.id for p in predictions])
        for prediction in predictions:
            self.notifier.notify(prediction, "completed")
        self.store.forget_ended(self._held(predictions))

    def _held(self, predictions: Sequence[Prediction]) -> list[str]:
        """The ids whose follow-up Redis holds. Without replicas to wait for, all: the writes were
        answered. With them, those whose ``completed`` message (if they want one) is still there once the
        replicas confirmed: a failover between the record and its confirmation can lose it, and the ended
        set keeps it for ``follow_up_missed``."""
        replication = self._waited_for()
        if replication is None or not predictions:
            return [p.id for p in predictions]
        if not replication.settle():
            return []
        wanted = [p.id for p in predictions if p.wants_event("completed")]
        recorded = self.notifier.completed_recorded(wanted)
        return [p.id for p in predictions if p.id in recorded or not p.wants_event("completed")]
