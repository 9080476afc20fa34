"""A worker's runner against a real redis-server and real Celery messages, with in-memory storage.

``Harness.submit`` stores a prediction and publishes its Celery message the way the API does;
``Harness.work`` pops messages in the order kombu's Redis transport would deliver them to a solo
worker and hands each to ``PredictionRunner.run``, like the Celery task does.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from redis import Redis

from models.registry import find_model
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.store import PredictionStore
from shared.runtime.celery_config import create_celery
from shared.scheduling.enqueue import enqueue_prediction
from shared.scheduling.task_messages import PredictMessages
from shared.settings import Settings
from shared.storage.objects import StorageUnavailable, output_key
from worker.predictor_pool import PredictorPool
from worker.queue_peek import QueuePeek, prediction_id_of
from worker.runner import PredictionRunner


class MemoryStorage:
    def __init__(self, fail_puts: bool = False) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str] = {}
        self.fail_puts = fail_puts
        # Called with each key before it is stored: what happens elsewhere while an upload is under way.
        self.before_put: Callable[[str], None] | None = None

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        if self.fail_puts:
            raise StorageUnavailable("object storage unreachable")
        if self.before_put is not None:
            self.before_put(key)
        self.objects[key] = data
        self.content_types[key] = content_type

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        for key in [key for key in self.objects if key.startswith(prefix)]:
            del self.objects[key]

    def under(self, prefix: str) -> list[str]:
        return sorted(key for key in self.objects if key.startswith(prefix))


@dataclass
class RecordingNotifier:
    events: list[tuple[str, str]] = field(default_factory=list)

    def notify(self, prediction: Prediction, event: str) -> None:
        self.events.append((prediction.id, event))

    def of(self, prediction_id: str) -> list[str]:
        """The prediction's lifecycle events, in order (``logs`` events left out)."""
        return [event for pid, event in self.events if pid == prediction_id and event != "logs"]


class Harness:
    """``redis``: a URL (messages published by Celery's ``send_task``) or a client such as fakeredis
    (messages rendered by ``shared.scheduling.task_messages``, byte-for-byte what kombu would push)."""

    def __init__(
        self, redis: str | Redis, settings: Settings, predictors: PredictorPool, storage: MemoryStorage | None = None
    ) -> None:
        self.redis = Redis.from_url(redis) if isinstance(redis, str) else redis
        self.redis.flushdb()
        self.settings = settings
        self.store = PredictionStore(self.redis)
        self.celery = (
            create_celery(settings.model_copy(update={"redis_url": redis})) if isinstance(redis, str) else None
        )
        self.messages = PredictMessages(create_celery(settings))
        self.storage = storage or MemoryStorage()
        self.notifier = RecordingNotifier()
        self.runner = PredictionRunner(
            settings,
            PredictionLifecycle(self.store, self.notifier),
            self.storage,
            predictors,
            requeue=lambda prediction_id, queue: None,
        )
        self.queues = sorted({spec.queue for spec in map(find_model, predictors.models)})
        self.peek = QueuePeek(self.redis, self.queues)
        self.runner.enable_batching_and_prefetch(self.peek.upcoming)
        self.timeline = self.runner.timeline

    def submit(self, model: str, priority: int = 0, **inputs: Any) -> str:
        spec = find_model(model)
        prediction = Prediction(tenant="t", model=model, version="v", queue=spec.queue, input=inputs)
        self.store.create(prediction)
        if self.celery is not None:
            enqueue_prediction(self.celery, prediction.id, spec.queue, priority)
        else:
            self.redis.lpush(*self.messages.render(prediction.id, spec.queue, priority))
        return prediction.id

    def next_delivery(self) -> str | None:
        """Pop the message a solo worker on these queues would get next (kombu: BRPOP in key order)."""
        for key in self.peek.lists:
            raw = self.redis.rpop(key)
            if raw is not None:
                return prediction_id_of(raw)
        return None

    def work(self) -> list[list[str]]:
        """Deliver every queued message; what each ``run`` took on, in order. Waits for uploads."""
        taken = []
        while (prediction_id := self.next_delivery()) is not None:
            taken.append(self.runner.run(prediction_id))
        self.runner.uploader.drain()
        return taken

    def get(self, prediction_id: str) -> Prediction:
        prediction = self.store.get(prediction_id)
        assert prediction is not None
        return prediction

    def output_pixels(self, prediction_id: str) -> list[np.ndarray]:
        names = self.get(prediction_id).output or []
        return [
            np.asarray(Image.open(io.BytesIO(self.storage.objects[output_key(prediction_id, name)]))) for name in names
        ]

    def close(self) -> None:
        self.runner.close()
        self.redis.close()
