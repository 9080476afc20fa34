"""Periodic work every worker process runs beside its tasks: reaping lapsed leases, deleting data
past retention and, on the webhook worker, sending due webhook deliveries. Each job's Redis
operations are atomic claims, so any number of workers can run them at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from models.registry import find_model
from shared import queues
from shared.enqueue import enqueue_prediction
from shared.leases import Leases
from shared.metrics import record_finished
from shared.retention import Janitor
from shared.status import Status
from shared.store import PredictionStore
from shared.webhook_outbox import WebhookNotifier, WebhookOutbox

log = logging.getLogger(__name__)


@dataclass
class Job:
    name: str
    interval_s: float
    run: Callable[[], object]


class Maintenance:
    """Runs jobs on their intervals in one daemon thread until stopped."""

    def __init__(self, jobs: list[Job], tick_s: float = 0.25) -> None:
        self.jobs = jobs
        self.tick_s = tick_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        elapsed = {job.name: job.interval_s for job in self.jobs}  # run each once at start
        while not self._stopping.wait(self.tick_s):
            for job in self.jobs:
                elapsed[job.name] += self.tick_s
                if elapsed[job.name] < job.interval_s:
                    continue
                elapsed[job.name] = 0.0
                try:
                    job.run()
                except Exception:  # Redis or S3 restarting: keep going, every job is safe to retry
                    log.exception("maintenance job %s failed", job.name)


def send_due_webhooks(outbox: WebhookOutbox, celery: Celery) -> int:
    """Enqueue webhook deliveries that are due (retries, and any whose first message was lost)."""
    due = outbox.claim_due()
    for delivery_id in due:
        celery.send_task(queues.DELIVER_WEBHOOK_TASK, args=[delivery_id], queue=queues.WEBHOOKS)
    return len(due)


def reap_lapsed_leases(leases: Leases, store: PredictionStore, notifier: WebhookNotifier, celery: Celery,
                       max_attempts: int) -> int:
    """Requeue predictions whose worker stopped renewing their lease; fail them after ``max_attempts``."""
    reaped = 0
    for prediction_id in leases.lapsed():
        outcome = leases.reap(prediction_id, max_attempts)
        prediction = store.get(prediction_id) if outcome else None
        if prediction is None:
            continue
        reaped += 1
        if outcome is Status.STARTING:
            log.warning("prediction %s: its worker stopped renewing the lease; requeued", prediction_id)
            enqueue_prediction(celery, prediction_id, find_model(prediction.model).queue, queues.PRIORITY_REQUEUE)
        else:
            log.error("prediction %s failed: %s", prediction_id, prediction.error)
            record_finished(prediction.model, Status.FAILED.value)
            notifier.notify(prediction, "completed")
    return reaped


def worker_jobs(leases: Leases, store: PredictionStore, notifier: WebhookNotifier, celery: Celery, janitor: Janitor,
                max_attempts: int, with_webhooks: bool, retention_interval_s: float) -> list[Job]:
    jobs = [
        Job("reap-leases", max(1.0, leases.lease_s / 3),
            lambda: reap_lapsed_leases(leases, store, notifier, celery, max_attempts)),
        Job("retention", retention_interval_s, janitor.run_once),
    ]
    if with_webhooks:
        jobs.append(Job("webhooks", 0.25, lambda: send_due_webhooks(notifier.outbox, celery)))
    return jobs
