"""The Celery worker entry point, for both kinds of worker:

- GPU: ``celery -A worker.celery_app:app worker --pool solo -Q gpu.sd2-depth`` — one process per
  GPU with the solo pool (CUDA does not survive a fork); the pipelines stay resident in it.
- webhooks: ``celery -A worker.celery_app:app worker --pool threads -Q webhooks`` — CPU only.

Every worker also runs the maintenance jobs (lease reaper, retention; webhook sending on the
webhook worker) in a side thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from celery.signals import (after_setup_logger, after_setup_task_logger, worker_init, worker_ready, worker_shutdown,
                            worker_shutting_down)
from redis import Redis

from shared import queues
from shared.celery_config import create_celery
from shared.enqueue import enqueue_prediction
from shared.leases import Leases
from shared.lifecycle import PredictionLifecycle
from shared.logs import apply_format, bound_prediction
from shared.redis_client import connect
from shared.retention import Janitor
from shared.secrets import webhook_secret
from shared.settings import Settings, get_settings
from shared.storage import Storage
from shared.store import PredictionStore
from shared.webhook_outbox import WebhookNotifier, WebhookOutbox
from worker.maintenance import Maintenance, worker_jobs
from worker.metrics import start_exporter
from worker.predictor_pool import PredictorPool
from worker.queue_peek import QueuePeek
from worker.runner import PredictionRunner
from worker.warmup import wants_warmup, warm_up
from worker.webhook_sender import deliver

log = logging.getLogger(__name__)

app = create_celery(get_settings())


@dataclass
class WorkerRuntime:
    """What a worker process builds once and keeps (Celery needs a module-level app, so this is too)."""

    settings: Settings

    @cached_property
    def redis(self) -> Redis:
        return connect(self.settings.redis_url, socket_timeout=30)

    @cached_property
    def store(self) -> PredictionStore:
        return PredictionStore(self.redis, self.settings.retention_s)

    @cached_property
    def storage(self) -> Storage:
        return Storage(self.settings, attempts=self.settings.storage_attempts)

    @cached_property
    def notifier(self) -> WebhookNotifier:
        return WebhookNotifier(self.store, WebhookOutbox(self.redis, self.settings), app)

    @cached_property
    def runner(self) -> PredictionRunner:
        self.storage.ensure_bucket()
        return PredictionRunner(self.settings, self.store, self.storage, PredictorPool(self.settings), self.notifier,
                                requeue=lambda prediction_id, queue: enqueue_prediction(
                                    app, prediction_id, queue, queues.PRIORITY_REQUEUE))

    def maintenance(self, with_webhooks: bool) -> Maintenance:
        leases = Leases(self.redis, self.settings.lease_s)
        return Maintenance(worker_jobs(PredictionLifecycle(self.store, self.notifier), leases, self.notifier.outbox,
                                       app, Janitor(self.redis, self.storage), self.settings.max_attempts,
                                       with_webhooks, retention_interval_s=min(30.0, self.settings.retention_s / 4)))


runtime = WorkerRuntime(get_settings())
_background: list[Maintenance] = []


def _consumed_queues(sender) -> list[str]:
    return list(sender.app.amqp.queues.consume_from or [])


@worker_init.connect
def _load_models(sender, **_: object) -> None:
    """A GPU worker loads the pipelines for its queues before taking the first job."""
    gpu_queues = [name for name in _consumed_queues(sender) if name.startswith("gpu.")]
    if gpu_queues:
        runtime.runner.predictors.load_for_queues(gpu_queues)
        if wants_warmup(runtime.settings):
            warm_up(runtime.runner.predictors, runtime.runner.tuning, runtime.settings)
        # Micro-batching and prefetching look at what waits behind the running job on these queues.
        runtime.runner.watch_queue(QueuePeek(runtime.redis, gpu_queues).upcoming)


@worker_ready.connect
def _start_maintenance(sender, **_: object) -> None:
    maintenance = runtime.maintenance(with_webhooks=queues.WEBHOOKS in _consumed_queues(sender))
    maintenance.start()
    _background.append(maintenance)


@worker_ready.connect
def _start_metrics(**_: object) -> None:
    """Serve Prometheus metrics (KILN_WORKER_METRICS_PORT) once the worker takes jobs."""
    port = runtime.settings.worker_metrics_port
    try:
        start_exporter(port, runtime.settings.worker_metrics_host)
    except OSError as exc:
        log.error("worker metrics not served: KILN_WORKER_METRICS_PORT=%d cannot be bound: %s", port, exc)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_logs(logger, **_: object) -> None:
    """KILN_LOG_FORMAT=json: Celery's log handlers write JSON lines carrying the prediction id."""
    if runtime.settings.log_format == "json":
        apply_format(logger.handlers, "json")


@worker_shutting_down.connect
def _begin_shutdown(**_: object) -> None:
    """Warm shutdown (SIGTERM): the running prediction may finish within the grace period."""
    if "runner" in runtime.__dict__:
        runtime.runner.begin_shutdown(runtime.settings.shutdown_grace_s)


@worker_shutdown.connect
def _stop_maintenance(**_: object) -> None:
    if "runner" in runtime.__dict__:
        runtime.runner.close(timeout_s=runtime.settings.shutdown_grace_s)
    for maintenance in _background:
        maintenance.stop()


@app.task(name=queues.PREDICT_TASK)
def predict(prediction_id: str) -> None:
    with bound_prediction(prediction_id):
        runtime.runner.run(prediction_id)


@app.task(name=queues.DELIVER_WEBHOOK_TASK)
def deliver_webhook(delivery_id: str) -> None:
    deliver(runtime.notifier.outbox, delivery_id, webhook_secret(runtime.settings, runtime.redis), runtime.settings)
