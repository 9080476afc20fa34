"""The prediction lifecycle on a worker: processing → predict → upload → a terminal status.

Celery carries only the prediction id; the record in Redis decides what happens. Starting takes
the prediction's lease atomically, so of two deliveries of one message only one runs it; every
later change is guarded by the attempt number, so a worker that lost its lease (and was replaced)
can never finish a prediction, and nothing completes twice.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError
from PIL import Image

from shared import metrics
from shared.files import FileStore
from shared.images import ImageInputError
from shared.leases import Leases
from shared.models.base import InputLimits
from shared.models.registry import find_model
from shared.prediction import Prediction, utcnow
from shared.settings import Settings
from shared.status import Status
from shared.storage import Storage, output_key
from shared.store import PredictionStore
from shared.webhook_outbox import WebhookNotifier
from worker.context import RunContext
from worker.heartbeat import Heartbeat
from worker.interrupts import HandedBack, LeaseLost, PredictionCanceled
from worker.predictor_pool import PredictorPool
from worker.predictors.base import NamedImage, Output

log = logging.getLogger(__name__)

# Sends a prediction id back to the queue its model is served on.
Requeue = Callable[[str, str], None]


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def describe_failure(exc: BaseException) -> str:
    """The ``error`` a user sees: the message, with out-of-memory and storage outages named as such."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return f"out of memory: {exc}".strip().rstrip(":")
    if isinstance(exc, ImageInputError):
        return f"could not load an image input: {exc}"
    if isinstance(exc, (BotoCoreError, ClientError)):
        return f"could not store the outputs (object storage unavailable): {exc}"
    return str(exc) or type(exc).__name__


class PredictionRunner:
    def __init__(self, settings: Settings, store: PredictionStore, storage: Storage, predictors: PredictorPool,
                 notifier: WebhookNotifier, requeue: Requeue) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.files = FileStore(store.redis, storage, settings.file_retention_s)
        self.leases = Leases(store.redis, settings.lease_s)
        self.predictors = predictors
        self.notifier = notifier
        self.requeue = requeue
        # Set when the worker is shutting down and its grace period has run out.
        self.hand_back = threading.Event()

    def begin_shutdown(self, grace_s: float) -> None:
        """Let the running prediction finish within ``grace_s``, then hand it back to the queue."""
        timer = threading.Timer(grace_s, self.hand_back.set)
        timer.daemon = True
        timer.start()

    def run(self, prediction_id: str) -> Status | None:
        """Run one prediction to a terminal status. Returns that status, or None when skipped."""
        prediction = self.store.get(prediction_id)
        if prediction is None:
            log.warning("prediction %s does not exist; dropping the message", prediction_id)
            return None
        attempt = self.leases.start(prediction_id)
        if attempt is None:
            log.info("prediction %s is %s; not running it", prediction_id, self.store.status(prediction_id))
            return None
        if attempt == 1:
            metrics.record_queue_wait(prediction.model, (utcnow() - prediction.created_at).total_seconds())
        self.notifier.notify(prediction, "start")
        with Heartbeat(self.leases, prediction_id) as heartbeat:
            ctx = RunContext(prediction, self.store, self.notifier, self.files, self.settings,
                             lease_lost=heartbeat.lost, hand_back=self.hand_back)
            return self._run_attempt(prediction, attempt, ctx)

    def _run_attempt(self, prediction: Prediction, attempt: int, ctx: RunContext) -> Status | None:
        if attempt > 1:
            ctx.log(f"Running again (attempt {attempt}): the previous worker stopped without finishing.")
        try:
            ctx.check_interruptions()
            spec = find_model(prediction.model)
            # The same bounds as at submission, in case settings changed since.
            inputs = spec.input_model.model_validate(
                prediction.input, context={"limits": InputLimits.from_settings(self.settings)})
            outputs = self.predictors.get(spec).predict(inputs, ctx)
            predict_time = time.monotonic() - ctx.started
            with metrics.timed_upload(prediction.model):
                names = self._upload(prediction.id, outputs)
        except LeaseLost:
            log.warning("prediction %s: lease lost, leaving it to the worker that took over", prediction.id)
            return None
        except HandedBack:
            return self._hand_back(prediction, attempt)
        except PredictionCanceled:
            ctx.log("Prediction canceled.")
            return self._finish(prediction, attempt, Status.CANCELED, predict_time=time.monotonic() - ctx.started)
        except Exception as exc:  # a predictor may raise anything; the user gets the message
            log.exception("prediction %s failed", prediction.id)
            ctx.log(traceback.format_exc())
            return self._finish(prediction, attempt, Status.FAILED, error=describe_failure(exc),
                                predict_time=time.monotonic() - ctx.started)
        if self.store.update_while_processing(prediction.id, if_attempt=attempt, output=names):
            self.notifier.notify(prediction, "output")
        return self._finish(prediction, attempt, Status.SUCCEEDED, output=names, predict_time=predict_time)

    def _upload(self, prediction_id: str, outputs: list[Output]) -> list[str]:
        names = []
        for index, output in enumerate(outputs):
            name, image = (output.name, output.image) if isinstance(output, NamedImage) else (f"out-{index}", output)
            self.storage.put_bytes(output_key(prediction_id, f"{name}.png"), encode_png(image), "image/png")
            names.append(f"{name}.png")
        return names

    def _hand_back(self, prediction: Prediction, attempt: int) -> Status | None:
        """Shutting down: back to the queue, without counting this run as a worker death."""
        if not self.store.transition(prediction.id, Status.STARTING, if_attempt=attempt, attempt=attempt - 1):
            return None
        self.store.append_log(prediction.id, "Worker shutting down: prediction handed back to the queue.\n")
        self.requeue(prediction.id, find_model(prediction.model).queue)
        log.info("prediction %s handed back to the queue", prediction.id)
        return Status.STARTING

    def _finish(self, prediction: Prediction, attempt: int, status: Status, **fields: object) -> Status | None:
        if self.store.transition(prediction.id, status, if_attempt=attempt, completed_at=utcnow(), **fields):
            log.info("prediction %s %s", prediction.id, status.value)
            metrics.record_finished(prediction.model, status.value, fields.get("predict_time"))
            self.notifier.notify(prediction, "completed")
            return status
        log.warning("prediction %s could not move to %s: it is %s", prediction.id, status.value,
                    self.store.status(prediction.id))
        return None
