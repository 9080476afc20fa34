"""The API and every worker process build the objects that keep predictions (store, webhook outbox
and notifier, lifecycle, dispatcher, batches) with the one function ``build_prediction_core``, and
the GPU worker's runner ends predictions through its process's lifecycle, never one of its own."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import fakeredis
import pytest

import api.services
import shared.runtime.worker_process as worker_process
from api.services import Services
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction, utcnow
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.runtime.celery_config import create_celery
from shared.runtime.prediction_core import PredictionCore, build_prediction_core
from shared.runtime.worker_process import WorkerProcess
from shared.settings import Settings
from tests.support.runner_harness import MemoryStorage, RecordingNotifier
from worker.predictor_pool import PredictorPool
from worker.runner import PredictionRunner

# Building connects to nothing: no server listens here, and none is needed.
SETTINGS = Settings(_env_file=None, redis_url="redis://127.0.0.1:1/0", api_token="a")


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[PredictionCore]:
    """Every core the API's and the workers' roots build from now on, each through the one builder."""
    cores: list[PredictionCore] = []

    def recording_builder(*args: Any) -> PredictionCore:
        cores.append(build_prediction_core(*args))
        return cores[-1]

    monkeypatch.setattr(api.services, "build_prediction_core", recording_builder)
    monkeypatch.setattr(worker_process, "build_prediction_core", recording_builder)
    return cores


def assert_wired(core: PredictionCore) -> None:
    """One store, one outbox, one notifier and one set of predict messages under everything."""
    assert core.notifier.store is core.store and core.notifier.outbox is core.outbox
    assert core.lifecycle.store is core.store and core.lifecycle.notifier is core.notifier
    assert core.dispatcher.messages is core.messages
    assert core.batch_settler.batches is core.batches and core.batch_settler.outbox is core.outbox
    assert core.store.redis is core.outbox.redis is core.dispatcher.redis is core.batches.redis


def test_the_api_reads_every_shared_object_from_its_one_built_core(built: list[PredictionCore]) -> None:
    services = Services.connect(SETTINGS)
    assert built == [services.core]
    assert_wired(services.core)
    assert services.core.store.redis is services.redis
    assert services.store is services.core.store
    assert services.lifecycle is services.core.lifecycle
    assert services.messages is services.core.messages
    assert services.dispatcher is services.core.dispatcher
    assert services.batches is services.core.batches
    assert services.batch_settler is services.core.batch_settler


def test_a_worker_process_runs_its_maintenance_over_its_one_built_core(
    built: list[PredictionCore], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs: dict[str, Any] = {}

    def recording_jobs(lifecycle: Any, leases: Any, outbox: Any, *args: Any, **kwargs: Any) -> list[Any]:
        jobs.update(kwargs, lifecycle=lifecycle, outbox=outbox)
        return []

    monkeypatch.setattr(worker_process, "worker_jobs", recording_jobs)
    monkeypatch.setattr(worker_process, "start_exporter", lambda *args: None)
    process = WorkerProcess(SETTINGS, create_celery(SETTINGS))
    process.__dict__["storage"] = MemoryStorage()
    process.start([])
    process.stop()
    assert built == [process.core]
    assert_wired(process.core)
    assert process.core.store.redis is process.redis
    assert jobs["lifecycle"] is process.core.lifecycle and jobs["outbox"] is process.core.outbox
    assert jobs["dispatcher"] is process.core.dispatcher and jobs["settler"] is process.core.batch_settler
    assert jobs["lost_messages"] is process.core.lost_messages


class RecordingLifecycle(PredictionLifecycle):
    def __init__(self, store: PredictionStore, notifier: RecordingNotifier) -> None:
        super().__init__(store, notifier)
        self.expired: list[str] = []

    def expire(self, prediction: Prediction) -> Status | None:
        self.expired.append(prediction.id)
        return super().expire(prediction)


def test_the_runner_ends_predictions_through_the_lifecycle_it_is_given() -> None:
    notifier = RecordingNotifier()
    lifecycle = RecordingLifecycle(PredictionStore(fakeredis.FakeRedis()), notifier)
    runner = PredictionRunner(SETTINGS, lifecycle, MemoryStorage(), PredictorPool(SETTINGS), lambda *_: None)
    late = Prediction(
        tenant="t",
        model="kiln/sd2-depth2img",
        version="v",
        queue="gpu.sd2-depth",
        input={},
        deadline=utcnow() - timedelta(seconds=1),
    )
    lifecycle.store.create(late)
    assert runner.run(late.id) == []
    assert lifecycle.expired == [late.id] and lifecycle.store.status(late.id) is Status.ABORTED
    assert notifier.of(late.id) == ["completed"]


def test_the_gpu_worker_gives_its_runner_the_process_lifecycle(built: list[PredictionCore]) -> None:
    from worker.celery_app import GpuWorkerProcess  # the GPU worker's entry module, loaded only here

    process = GpuWorkerProcess(SETTINGS, create_celery(SETTINGS))
    process.__dict__["storage"] = type("Bucket", (MemoryStorage,), {"ensure_bucket": lambda self: None})()
    assert process.runner.lifecycle is process.core.lifecycle
    assert built == [process.core]
