"""Prometheus metrics, in the default registry of the process that records them, and the exporter
a worker process serves them on.

Each process counts what it did itself: the API its creates and the cancels of queued predictions,
a GPU worker the predictions it ran, the webhook worker its deliveries (and the predictions its
lease reaper failed). Prometheus scrapes every API replica (``GET /metrics``) and every worker
(``KILN_WORKER_METRICS_PORT``), so cluster totals are ``sum by (model, status) (...)`` over the
targets. Queue depth is read from Redis at scrape time (``api.routes.metrics``) and GPU memory from
torch (``worker.metrics``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from time import monotonic

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PREDICTIONS_CREATED = Counter("kiln_predictions_created", "Predictions accepted and queued, by model.", ["model"])
PREDICTIONS_FINISHED = Counter(
    "kiln_predictions_finished", "Predictions that reached a terminal status, by model and status.", ["model", "status"]
)
QUEUE_WAIT = Histogram(
    "kiln_prediction_queue_wait_seconds",
    "From create to a worker's first start of the prediction.",
    ["model"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
)
PREDICT_TIME = Histogram(
    "kiln_prediction_predict_seconds",
    "Time a worker spent running a prediction (inputs, denoising, encoding).",
    ["model", "status"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
UPLOAD_TIME = Histogram(
    "kiln_prediction_upload_seconds",
    "Time to store one prediction's outputs in S3.",
    ["model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JANITOR_LAG = Gauge(
    "kiln_janitor_lag_seconds",
    "How long the oldest retention or record-expiry item has been due and not yet done (0: none due).",
)
WEBHOOK_DELIVERIES = Counter(
    "kiln_webhook_deliveries",
    "Webhook delivery attempts by event and outcome: delivered, retrying (failed, "
    "another attempt is scheduled) or failed (given up: retries spent, 410, or a refused URL).",
    ["event", "outcome"],
)


def record_created(models: Iterable[str]) -> None:
    for model in models:
        PREDICTIONS_CREATED.labels(model=model).inc()


def record_created_counts(counts: Mapping[str, int]) -> None:
    """``record_created`` for many predictions at once: model -> how many."""
    for model, count in counts.items():
        PREDICTIONS_CREATED.labels(model=model).inc(count)


def record_finished(model: str, status: str, predict_time_s: object = None) -> None:
    """Count a terminal status; with the run's predict time when a worker ran it."""
    PREDICTIONS_FINISHED.labels(model=model, status=status).inc()
    if isinstance(predict_time_s, (int, float)):
        PREDICT_TIME.labels(model=model, status=status).observe(predict_time_s)


def record_queue_wait(model: str, seconds: float) -> None:
    QUEUE_WAIT.labels(model=model).observe(max(0.0, seconds))


@contextmanager
def timed_upload(model: str) -> Iterator[None]:
    """Observe the block's duration as one prediction's upload time, if it completes."""
    started = monotonic()
    yield
    UPLOAD_TIME.labels(model=model).observe(monotonic() - started)


def record_janitor_lag(seconds: float) -> None:
    JANITOR_LAG.set(seconds)


def record_webhook_delivery(event: str, outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(event=event, outcome=outcome).inc()


_exporting: list[int] = []


def start_exporter(port: int, host: str = "0.0.0.0", collectors: Iterable[Collector] = ()) -> bool:
    """Serve this process's metrics (and ``collectors``) on ``host:port``, once per process. False when
    off (port 0).

    Each Celery worker is one process (solo pool on a GPU, threads for webhooks), so a plain
    ``prometheus_client`` HTTP server in that process sees every sample; no multiprocess mode needed.
    It starts once the worker is ready (models loaded), so an answer on the port also means "serving".
    """
    if port == 0 or _exporting:
        return bool(_exporting)
    start_http_server(port, addr=host)
    for collector in collectors:
        REGISTRY.register(collector)
    _exporting.append(port)
    log.info("worker metrics on port %d", port)
    return True
