"""Periodic work every worker process (``shared.runtime.worker_process``) runs beside its tasks: enforcing
deadlines (``Cancel-After``), reaping lapsed leases, deleting data past retention, releasing batch
items to Celery (the dispatcher), recording finished batches' webhooks, sending again the message of
a queued prediction whose message was lost (``shared.scheduling.lost_messages``) and, on a worker that
consumes the ``webhooks`` queue, sending due webhook deliveries. Each job's Redis operations are
atomic claims, so any number of workers can run them at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery

from shared.batches.settler import BatchSettler
from shared.predictions.deadlines import expire_due
from shared.predictions.leases import Leases
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.retention import Janitor
from shared.predictions.status import Status
from shared.scheduling import queues
from shared.scheduling.dispatcher import Dispatcher
from shared.scheduling.enqueue import enqueue_prediction
from shared.scheduling.lost_messages import LostMessages
from shared.webhooks.outbox import WebhookOutbox

log = logging.getLogger(__name__)


# Deadlines (Cancel-After) are enforced within about this long of passing.
DEADLINES_INTERVAL_S = 0.5
# How often queued predictions past their grace are checked for a lost message.
RESEND_LOST_INTERVAL_S = 5.0


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


def reap_lapsed_leases(lifecycle: PredictionLifecycle, leases: Leases, celery: Celery, max_attempts: int) -> int:
    """Requeue predictions whose worker stopped renewing their lease, on the queue their record names;
    the lifecycle fails them after ``max_attempts``. The status script that puts one back files it in
    the waiting index, so a message not sent (this process dying first) is sent by ``resend-lost``."""
    reaped = 0
    for prediction_id in leases.lapsed():
        found = lifecycle.reap(leases, prediction_id, max_attempts)
        if found is None:
            continue
        reaped += 1
        outcome, prediction = found
        if outcome is Status.STARTING:
            log.warning("prediction %s: its worker stopped renewing the lease; requeued", prediction_id)
            enqueue_prediction(celery, prediction_id, prediction.queue, queues.PRIORITY_REQUEUE)
    return reaped


def worker_jobs(
    lifecycle: PredictionLifecycle,
    leases: Leases,
    outbox: WebhookOutbox,
    celery: Celery,
    janitor: Janitor,
    max_attempts: int,
    with_webhooks: bool,
    retention_interval_s: float,
    dispatcher: Dispatcher,
    settler: BatchSettler,
    lost_messages: LostMessages,
) -> list[Job]:
    jobs = [
        Job("deadlines", DEADLINES_INTERVAL_S, lambda: expire_due(lifecycle, leases.redis)),
        Job(
            "reap-leases",
            max(1.0, leases.lease_s / 3),
            lambda: reap_lapsed_leases(lifecycle, leases, celery, max_attempts),
        ),
        Job("retention", retention_interval_s, janitor.sweep),
        Job("dispatch", 0.5, dispatcher.release_all),
        Job("settle-batches", 0.5, settler.settle),
        Job("follow-up-endings", 2.0, lifecycle.follow_up_missed),
        Job("resend-lost", RESEND_LOST_INTERVAL_S, lost_messages.resend),
    ]
    if with_webhooks:
        jobs.append(Job("webhooks", 0.25, lambda: send_due_webhooks(outbox, celery)))
    return jobs
