"""The GPU worker's Celery entry point:

    celery -A worker.celery_app:app worker --pool solo -Q gpu.sd2-depth

One process per GPU with the solo pool (CUDA does not survive a fork); the pipelines stay resident
in it. Like every worker process (``shared.runtime.worker_process``) it also runs the maintenance jobs
(lease reaper, retention) in a side thread. Webhooks are the webhook worker's
(``webhook_worker.celery_app``, no torch); a GPU worker that is also given ``-Q ...,webhooks``
delivers them too, and re-sends due ones.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from celery.signals import worker_init, worker_shutting_down
from prometheus_client.registry import Collector

from shared.runtime.celery_config import create_celery
from shared.runtime.logs import bound_prediction
from shared.runtime.worker_process import WorkerProcess, consumed_queues
from shared.scheduling import queues
from shared.scheduling.enqueue import enqueue_prediction
from shared.settings import get_settings
from shared.webhooks.delivery import add_delivery_task
from worker.metrics import GpuMemoryCollector
from worker.predictor_pool import PredictorPool
from worker.queue_peek import QueuePeek
from worker.runner import PredictionRunner
from worker.warmup import wants_warmup, warm_up

log = logging.getLogger(__name__)

app = create_celery(get_settings())


class GpuWorkerProcess(WorkerProcess):
    """A worker process plus the prediction runner and its predictors."""

    @cached_property
    def runner(self) -> PredictionRunner:
        self.storage.ensure_bucket()
        return PredictionRunner(
            self.settings,
            self.core.lifecycle,
            self.storage,
            PredictorPool(self.settings),
            requeue=lambda prediction_id, queue: enqueue_prediction(app, prediction_id, queue, queues.PRIORITY_REQUEUE),
        )

    def metrics_collectors(self) -> list[Collector]:
        return [GpuMemoryCollector()]

    def stop(self) -> None:
        """Finish the uploads still running within the grace period, then stop the maintenance jobs."""
        if "runner" in self.__dict__:
            self.runner.close(timeout_s=self.settings.shutdown_grace_s)
        super().stop()


runtime = GpuWorkerProcess(get_settings(), app)
runtime.connect_signals()
add_delivery_task(app, runtime)


@worker_init.connect
def _load_models(sender: Any, **_: object) -> None:
    """A GPU worker loads the pipelines for its queues before taking the first job."""
    gpu_queues = [name for name in consumed_queues(sender) if name.startswith("gpu.")]
    if gpu_queues:
        runtime.runner.predictors.load_for_queues(gpu_queues)
        if wants_warmup(runtime.settings):
            warm_up(runtime.runner.predictors, runtime.runner.tuning, runtime.settings)
        # Micro-batching and prefetching look at what waits behind the running job on these queues.
        runtime.runner.enable_batching_and_prefetch(QueuePeek(runtime.redis, gpu_queues).upcoming)


@worker_shutting_down.connect
def _begin_shutdown(**_: object) -> None:
    """Warm shutdown (SIGTERM): the running prediction may finish within the grace period."""
    if "runner" in runtime.__dict__:
        runtime.runner.begin_shutdown(runtime.settings.shutdown_grace_s)


@app.task(name=queues.PREDICT_TASK, bind=True)
def predict(task: Any, prediction_id: str) -> None:
    with bound_prediction(prediction_id):
        _top_up(task)
        runtime.runner.run(prediction_id)


def _top_up(task: Any) -> None:
    """This job's message left a gap in its queue: let the dispatcher fill it while the job runs."""
    queue = (task.request.delivery_info or {}).get("routing_key")
    if queue in queues.GPU_QUEUES:
        try:
            runtime.core.dispatcher.release(queue)
        except Exception as exc:  # the maintenance job releases it shortly
            log.warning("dispatcher release for %s failed: %s", queue, exc)
