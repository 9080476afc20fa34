"""A finished batch's one ``completed`` webhook, signed like prediction webhooks (its tenant's secret),
sent through the webhook outbox. ``BatchSettler.settle`` is the one place a batch's end is followed
up: a maintenance job of every worker runs it, and the API after a cancel. It also brings the
retention of the inputs its items share forward to its items' own (retention, or the longest ``retention_s``
its items gave, after the last ended)."""

from __future__ import annotations

import json
import logging

from celery import Celery

from shared.batches.records import BatchStore, batch_delivery_id, render_batch
from shared.db.replication import NotReplicated, Replication
from shared.predictions import retention
from shared.scheduling import queues
from shared.webhooks.outbox import WebhookOutbox

log = logging.getLogger(__name__)


class BatchSettler:
    def __init__(
        self,
        batches: BatchStore,
        outbox: WebhookOutbox,
        celery: Celery,
        retention_s: float,
        replication: Replication | None = None,
    ) -> None:
        self.batches = batches
        self.outbox = outbox
        self.celery = celery
        # KILN_RETENTION_S: how long after its last item ended a batch's shared inputs are kept.
        self.retention_s = retention_s
        # KILN_REDIS_MIN_REPLICAS_ACK: a batch leaves the finished set once the replicas hold its webhook.
        self.replication = replication

    def settle(self) -> int:
        """Record the webhook of every batch that finished (once each); returns how many were settled."""
        settled = 0
        for batch_id in self.batches.claim_finished():
            batch = self.batches.get(batch_id)
            if batch is not None and batch.completed_at is not None:
                kept_s = self.retention_s if batch.retention_s is None else min(batch.retention_s, self.retention_s)
                due = batch.completed_at + kept_s
                retention.schedule(self.batches.redis, "batch", batch.id, due)
                expires = batch.completed_at + self.batches.record_retention_s
                retention.schedule(self.batches.redis, "batch_record", batch.id, expires)
            if batch is not None and batch.webhook:
                body = json.dumps(render_batch(batch))
                delivery = self.outbox.record_once(
                    batch_delivery_id(batch.id), batch.id, batch.tenant, batch.webhook, body
                )
                if delivery is not None:
                    self._enqueue(delivery.id)
            if not self._held(batch_id, batch is not None and bool(batch.webhook)):
                continue  # a failover lost the webhook (or the replicas lag): the next claim records it again
            self.batches.forget_finished(batch_id)
            log.info("batch %s %s", batch_id, batch.status if batch else "expired")
            settled += 1
        return settled

    def _held(self, batch_id: str, with_webhook: bool) -> bool:
        """Whether the replicas hold what was recorded for the batch (always, with none to wait for): its
        webhook is read back after they confirm, since a failover between the two can lose it."""
        if self.replication is None or self.replication.replicas <= 0:
            return True
        try:
            self.replication.confirm(
                (lambda: self.outbox.get(batch_delivery_id(batch_id)) is not None) if with_webhook else None
            )
        except NotReplicated as exc:
            log.warning("batch %s: its webhook is not confirmed by the replicas (%s); it stays finished", batch_id, exc)
            return False
        return True

    def _enqueue(self, delivery_id: str) -> None:
        try:
            self.celery.send_task(queues.DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=queues.WEBHOOKS)
        except Exception as exc:  # the outbox's poller sends it once its lease passes
            log.warning("batch webhook %s not enqueued now (%s); the poller will send it", delivery_id, exc)
