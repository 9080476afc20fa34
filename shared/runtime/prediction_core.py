"""The objects that keep predictions and batches in Redis, built the same way in every Kiln process:
the API (``api.services``) and each Celery worker (``shared.runtime.worker_process``) build one
``PredictionCore`` with ``build_prediction_core`` and add only what they alone need."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from redis import Redis

from shared.batches.records import BatchStore
from shared.batches.settler import BatchSettler
from shared.db.replication import Replication
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.store import PredictionStore
from shared.scheduling.dispatcher import Dispatcher
from shared.scheduling.lost_messages import LostMessages
from shared.scheduling.task_messages import PredictMessages
from shared.settings import Settings
from shared.webhooks.outbox import WebhookNotifier, WebhookOutbox


@dataclass(frozen=True)
class PredictionCore:
    store: PredictionStore
    # Webhook events: recorded in the outbox, then their delivery enqueued.
    outbox: WebhookOutbox
    notifier: WebhookNotifier
    # Ends predictions with their retention, metrics and webhook (``shared.predictions.lifecycle``).
    lifecycle: PredictionLifecycle
    # Predict messages rendered from a Celery-made template, pushed by the dispatcher.
    messages: PredictMessages
    dispatcher: Dispatcher
    # Sends again the message of a queued prediction whose message was lost (a maintenance job).
    lost_messages: LostMessages
    # Batch objects (/v1/batches) and their one ``completed`` webhook.
    batches: BatchStore
    batch_settler: BatchSettler
    # What "acknowledged" waits for: KILN_REDIS_MIN_REPLICAS_ACK replicas (``shared.db.replication``).
    replication: Replication


def build_prediction_core(settings: Settings, redis: Redis, celery: Celery) -> PredictionCore:
    """Every object of the core, over one synchronous Redis client and one Celery app; nothing here
    talks to Redis or the broker yet."""
    store = PredictionStore(redis, settings.retention_s, settings.record_retention_s)
    outbox = WebhookOutbox(redis, settings)
    notifier = WebhookNotifier(store, outbox, celery)
    messages = PredictMessages(celery)
    batches = BatchStore(redis, max(settings.record_retention_s, settings.retention_s))
    replication = Replication(redis, settings.redis_min_replicas_ack, settings.redis_replica_ack_timeout_s)
    return PredictionCore(
        store=store,
        outbox=outbox,
        notifier=notifier,
        lifecycle=PredictionLifecycle(store, notifier, replication),
        messages=messages,
        dispatcher=Dispatcher(redis, messages, settings.dispatch_ahead),
        lost_messages=LostMessages(redis, messages),
        batches=batches,
        batch_settler=BatchSettler(batches, outbox, celery, settings.retention_s, replication),
        replication=replication,
    )
