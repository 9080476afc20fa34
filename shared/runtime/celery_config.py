"""The Celery app both sides share: the API only sends tasks by name, workers consume them."""

from __future__ import annotations

from celery import Celery

from shared.scheduling import queues
from shared.settings import Settings


def create_celery(settings: Settings) -> Celery:
    app = Celery("kiln", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        # A job is acknowledged only after it ran, and requeued if its worker died, so no
        # accepted prediction is lost; the prediction record makes a rerun harmless.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=queues.SD2_DEPTH,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # One Redis list per priority step, popped in order: interactive creates overtake batches.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "priority_steps": queues.PRIORITY_STEPS,
        },
        task_default_priority=queues.PRIORITY_INTERACTIVE,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app
