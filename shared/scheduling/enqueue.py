"""Putting a prediction id back on its model family's Celery queue (hand-back, the lease reaper).

Creates enqueue in the same Redis transaction that stores the records, with messages rendered from
a Celery-made template (``shared.scheduling.task_messages``, used by ``PredictionStore.create_many``); the
rarer requeues go through Celery's own ``send_task`` here. Queue and priority are chosen the same
way on both paths (docs/scheduling.md).
"""

from __future__ import annotations

from celery import Celery

from shared.scheduling import queues


def enqueue_prediction(celery: Celery, prediction_id: str, queue: str, priority: int) -> None:
    celery.send_task(queues.PREDICT_TASK, args=[prediction_id], queue=queue, priority=priority)
