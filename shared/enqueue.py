"""Putting prediction ids on their model family's Celery queue: one at a time, or a batch in one pipeline.

Every path that queues a prediction (create, batch create, hand-back, the lease reaper) goes
through here, so queue and priority stay consistent (docs/scheduling.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

from shared import queues

# Redis commands buffered before kombu flushes its publish pipeline.
PUBLISH_BATCH_SIZE = 1000


def enqueue_prediction(celery: Celery, prediction_id: str, queue: str, priority: int) -> None:
    celery.send_task(queues.PREDICT_TASK, args=[prediction_id], queue=queue, priority=priority)


def enqueue_predictions(celery: Celery, items: Iterable[tuple[str, str]], priority: int) -> None:
    """Send ``(prediction_id, queue)`` pairs through one producer, as pipelined LPUSHes (kombu's
    publish batch): a few round trips for the whole batch instead of one per message."""
    with celery.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH_SIZE):
        for prediction_id, queue in items:
            celery.send_task(queues.PREDICT_TASK, args=[prediction_id], queue=queue, priority=priority,
                             producer=producer)
