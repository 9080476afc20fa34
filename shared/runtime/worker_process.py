"""What every Kiln Celery worker process builds once and runs beside its tasks, GPU worker and
webhook worker alike: its clients (Redis, S3, and the prediction store, webhook notifier, lifecycle,
dispatcher and batches of ``shared.runtime.prediction_core``, built there as the API builds them),
the maintenance jobs in a side thread (``shared.runtime.maintenance``), the Prometheus exporter
(``KILN_WORKER_METRICS_PORT``) and Celery's log format (``KILN_LOG_FORMAT``).

Torch-free: the webhook worker (``webhook_worker.celery_app``) is this plus webhook delivery; the
GPU worker (``worker.celery_app``) adds its runner and predictors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_ready, worker_shutdown
from prometheus_client.registry import Collector
from redis import Redis

from shared.db.client import connect, redis_target
from shared.predictions.leases import Leases
from shared.predictions.retention import Janitor
from shared.runtime.logs import apply_format
from shared.runtime.maintenance import Maintenance, worker_jobs
from shared.runtime.metrics import start_exporter
from shared.runtime.prediction_core import PredictionCore, build_prediction_core
from shared.scheduling import queues
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.storage.s3 import Storage

log = logging.getLogger(__name__)


def consumed_queues(sender: Any) -> list[str]:
    """The queues the worker that sent a Celery signal consumes (its ``-Q``)."""
    return list(sender.app.amqp.queues.consume_from or [])


class WorkerProcess:
    """One per worker process, held by its Celery entry module (Celery needs a module-level app)."""

    def __init__(self, settings: Settings, celery: Celery) -> None:
        self.settings = settings
        self.celery = celery
        self._maintenance: Maintenance | None = None

    @cached_property
    def redis(self) -> Redis:
        return connect(redis_target(self.settings), socket_timeout=30)

    @cached_property
    def core(self) -> PredictionCore:
        return build_prediction_core(self.settings, self.redis, self.celery)

    @cached_property
    def storage(self) -> Storage:
        from shared.storage.s3 import Storage  # boto3 loads when a job first needs S3, not at import

        return Storage(self.settings, retries=self.settings.storage_attempts)

    def metrics_collectors(self) -> list[Collector]:
        """What the exporter serves besides ``shared.runtime.metrics``' series (the GPU worker adds GPU memory)."""
        return []

    def start(self, queues_consumed: Sequence[str]) -> None:
        """Once the worker takes jobs: the maintenance jobs (and sending due webhooks, when it
        consumes the ``webhooks`` queue), then the metrics exporter."""
        self._maintenance = Maintenance(
            worker_jobs(
                self.core.lifecycle,
                Leases(self.redis, self.settings.lease_s),
                self.core.outbox,
                self.celery,
                Janitor(self.redis, self.storage),
                self.settings.max_attempts,
                with_webhooks=queues.WEBHOOKS in queues_consumed,
                retention_interval_s=min(self.settings.janitor_interval_s, self.settings.retention_s / 4),
                dispatcher=self.core.dispatcher,
                lost_messages=self.core.lost_messages,
                settler=self.core.batch_settler,
            )
        )
        self._maintenance.start()
        port = self.settings.worker_metrics_port
        try:
            start_exporter(port, self.settings.worker_metrics_host, self.metrics_collectors())
        except OSError as exc:
            log.error("worker metrics not served: KILN_WORKER_METRICS_PORT=%d cannot be bound: %s", port, exc)

    def stop(self) -> None:
        """Worker shutdown: stop the maintenance jobs."""
        if self._maintenance is not None:
            self._maintenance.stop()

    def connect_signals(self) -> None:
        """Run ``start`` when the worker is ready, ``stop`` when it shuts down, and give Celery's log
        handlers Kiln's format. Called once, by the entry module."""
        worker_ready.connect(self._on_ready, weak=False)
        worker_shutdown.connect(self._on_shutdown, weak=False)
        after_setup_logger.connect(self._format_logs, weak=False)
        after_setup_task_logger.connect(self._format_logs, weak=False)

    def _on_ready(self, sender: Any, **_: object) -> None:
        self.start(consumed_queues(sender))

    def _on_shutdown(self, **_: object) -> None:
        self.stop()

    def _format_logs(self, logger: logging.Logger, **_: object) -> None:
        """KILN_LOG_FORMAT=json: Celery's log handlers write JSON lines carrying the prediction id."""
        if self.settings.log_format == "json":
            apply_format(logger.handlers, "json")
