"""The prediction lifecycle on a worker: processing → predict → upload → a terminal status.

Celery carries only the prediction id; the record in Redis decides what happens. Starting takes
the prediction's lease atomically, so of two deliveries of one message only one runs it; every
later change is guarded by the attempt number, so a worker that lost its lease (and was replaced)
can never finish a prediction, and nothing completes twice.

To keep a GPU busy (docs/benchmarks.md) a run may also claim queued predictions it can batch with
(``worker.batching``), use inputs the prefetcher prepared while the previous job denoised
(``worker.prefetch``), and leave uploads and the terminal transition to a side thread
(``worker.uploader``). Each prediction keeps its own lease, seed, logs, outputs and webhooks.
Whatever way it stops, a prediction ends through ``shared.predictions.lifecycle`` (``PredictionLifecycle.finish``).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from models.kit.contract import NamedFile, NamedImage, Output, Predictor, PreparedJob
from models.kit.tuning import Tuning
from models.registry import find_model
from shared.inputs.images import ImageInputError
from shared.inputs.output_formats import OutputEncoding, encoding_of
from shared.inputs.schema import InputLimits, ModelInput
from shared.predictions import deadlines
from shared.predictions.leases import Leases
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction, utcnow
from shared.predictions.status import TERMINAL, Status
from shared.runtime import metrics
from shared.settings import Settings
from shared.storage.files import FileStore
from shared.storage.objects import StorageUnavailable, output_key
from worker.batching import BatchClaimer, BatchStep, BatchStopped
from worker.context import FileInputError, RunContext
from worker.heartbeat import Heartbeat
from worker.interrupts import HandedBack, LeaseLost, PredictionCanceled
from worker.predictor_pool import PredictorPool
from worker.prefetch import DetachedContext, Prefetcher
from worker.timeline import Timeline
from worker.uploader import Uploader

if TYPE_CHECKING:
    from shared.storage.s3 import Storage

log = logging.getLogger(__name__)

# Until a run has taken its prediction's lease, the Celery message is the prediction's only way to
# run (no lease for the reaper to find), so a Redis outage there is waited out (about two minutes)
# rather than letting the task fail and its message be acknowledged.
CLAIM_RETRY = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=70)

# Sends a prediction id back to the queue its model is served on.
Requeue = Callable[[str, str], None]

# How long a worker waits for the record its message names to appear before dropping the message (a
# failover can lose a record for the seconds until the API's retried write brings it back).
RECORD_WAIT_S = 15.0
RECORD_POLL_S = 0.5
# The ids of the next predictions this worker's queues will deliver (at most n): ``QueuePeek.upcoming``.
Upcoming = Callable[[int], list[str]]


def describe_failure(exc: BaseException) -> str:
    """The ``error`` a user sees: the message, with out-of-memory and storage outages named as such."""
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return f"out of memory: {exc}".strip().rstrip(":")
    if isinstance(exc, ImageInputError):
        return f"could not load an image input: {exc}"
    if isinstance(exc, FileInputError):
        return f"could not load a file input: {exc}"
    if isinstance(exc, StorageUnavailable):
        return f"could not store the outputs (object storage unavailable): {exc}"
    return str(exc) or type(exc).__name__


# Ended in a way that keeps no output: an attempt's uploads are strays there.
ENDED_WITHOUT_OUTPUTS = TERMINAL - {Status.SUCCEEDED}


@dataclass(eq=False)
class RunningPrediction:
    """A prediction this worker claimed, on its way through a (possibly batched) run."""

    prediction: Prediction
    attempt: int
    ctx: RunContext
    heartbeat: Heartbeat
    job: Any = None
    # Settled: a terminal status was recorded (or handed to the uploader), or the lease was lost.
    done: bool = False


class PredictionRunner:
    def __init__(
        self,
        settings: Settings,
        lifecycle: PredictionLifecycle,
        storage: Storage,
        predictors: PredictorPool,
        requeue: Requeue,
        upcoming: Upcoming | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.settings = settings
        # The process's lifecycle; the runner records and notifies through its store and notifier.
        self.lifecycle = lifecycle
        self.store = lifecycle.store
        self.notifier = lifecycle.notifier
        self.storage = storage
        self.files = FileStore(self.store.redis, storage, settings.file_retention_s)
        self.leases = Leases(self.store.redis, settings.lease_s)
        self.predictors = predictors
        self.requeue = requeue
        self.timeline = timeline or Timeline()
        self.tuning = Tuning.from_settings(settings)
        self.uploader = Uploader(self.tuning.async_upload)
        self.batch_claimer: BatchClaimer | None = None
        self.prefetcher: Prefetcher | None = None
        if upcoming is not None:
            self.enable_batching_and_prefetch(upcoming)
        # Set when the worker is shutting down and its grace period has run out.
        self.hand_back = threading.Event()

    def enable_batching_and_prefetch(self, upcoming: Upcoming) -> None:
        """Turn on micro-batching and prefetching (as the settings allow) over this view of the queue."""
        if self.tuning.max_batch_size > 1:
            self.batch_claimer = BatchClaimer(
                self.store, self.leases, upcoming, self.tuning.max_batch_size, self.tuning.batch_window_s
            )
        if self.tuning.prefetch:
            # As many as the next batch may take, so its batch-mates are prepared ahead too.
            self.prefetcher = Prefetcher(
                self.store,
                self.files,
                self.settings,
                self.timeline,
                upcoming,
                self._prepare_detached,
                depth=self.tuning.max_batch_size,
            )

    def begin_shutdown(self, grace_s: float) -> None:
        """Let the running prediction finish within ``grace_s``, then hand it back to the queue."""
        timer = threading.Timer(grace_s, self.hand_back.set)
        timer.daemon = True
        timer.start()

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the uploads still running (and their predictions) and stop prefetching (worker shutdown)."""
        if not self.uploader.drain(timeout_s):
            log.warning("some outputs were still uploading at shutdown; their leases will lapse and they rerun")
        if self.prefetcher is not None:
            self.prefetcher.close()

    def run(self, prediction_id: str) -> list[str]:
        """Run a prediction (and any queued ones batched with it) to a terminal status.

        Returns the ids it took on: none when the prediction is gone or not queued (a duplicate or
        late delivery). With asynchronous uploads some may still be uploading when this returns.
        """
        claimed = CLAIM_RETRY.call_with_retry(
            lambda: self._claim(prediction_id),
            lambda error: log.warning(
                "prediction %s: Redis unavailable (%s); waiting to start it", prediction_id, error
            ),
        )
        if claimed is None:
            return []
        prediction, attempt = claimed
        items = [self._open(prediction, attempt)]
        try:
            items[0].ctx.check_interruptions()
            spec = find_model(prediction.model)
            predictor = self.predictors.get(spec)
            key = predictor.batch_key(self._validate(prediction))
        except Exception as exc:
            self._settle(items[0], exc)
            return [prediction_id]
        if self.batch_claimer is not None and key is not None:

            def key_of(candidate: Prediction) -> Hashable | None:
                try:
                    return predictor.batch_key(self._validate(candidate))
                except ValueError:  # invalid now: it fails on its own run
                    return None

            items += [self._open(p, a) for p, a in self.batch_claimer.claim(prediction, key, key_of)]
        for item in items:
            self._prepare(item, predictor)
        if self.prefetcher is not None:
            self.prefetcher.schedule(item.prediction.id for item in items)
        groups: dict[Hashable, list[RunningPrediction]] = {}
        for item in items:
            if not item.done:
                groups.setdefault(item.job.group_key, []).append(item)
        for group in groups.values():
            self._generate(predictor, group)
        return [item.prediction.id for item in items]

    def _claim(self, prediction_id: str) -> tuple[Prediction, int] | None:
        """The prediction and its new attempt number, its lease taken; None when there is nothing to run."""
        prediction = self._record_of_message(prediction_id)
        if prediction is None:
            log.warning("prediction %s does not exist; dropping the message", prediction_id)
            return None
        if deadlines.passed(prediction.deadline):
            # Never started, never billed as GPU time: aborted (unless it ended meanwhile).
            found = self.lifecycle.expire(prediction)
            log.info("prediction %s is past its deadline (it was %s); dropping it", prediction_id, found)
            return None
        attempt = self.leases.start(prediction_id)
        if attempt is None and self.store.status(prediction_id) is None and self._record_of_message(prediction_id):
            attempt = self.leases.start(prediction_id)  # its record came back (rewritten after a failover)
        if attempt is None:
            log.info("prediction %s is %s; not running it", prediction_id, self.store.status(prediction_id))
            return None
        return prediction, attempt

    def _record_of_message(self, prediction_id: str) -> Prediction | None:
        """The record a message names. A message is sent only with its record, so a missing one was lost
        with a Redis primary that failed over before the record reached the replicas; the API's write,
        retried on the new primary, brings it back within seconds: it is waited for (``RECORD_WAIT_S``)
        before the message is dropped."""
        deadline = time.monotonic() + RECORD_WAIT_S
        while (prediction := self.store.get(prediction_id)) is None and time.monotonic() < deadline:
            time.sleep(RECORD_POLL_S)
        return prediction

    def _open(self, prediction: Prediction, attempt: int) -> RunningPrediction:
        self.timeline.record("claimed", prediction.id)
        if attempt == 1:
            metrics.record_queue_wait(prediction.model, (utcnow() - prediction.created_at).total_seconds())
        self.notifier.notify(prediction, "start")
        heartbeat = Heartbeat(self.leases, prediction.id).__enter__()
        ctx = RunContext(
            prediction,
            self.store,
            self.notifier,
            self.files,
            self.settings,
            lease_lost=heartbeat.lost,
            hand_back=self.hand_back,
            timeline=self.timeline,
            attempt=attempt,
        )
        if attempt > 1:
            ctx.log(f"Running again (attempt {attempt}): the previous worker stopped without finishing.")
        return RunningPrediction(prediction, attempt, ctx, heartbeat)

    def _validate(self, prediction: Prediction) -> ModelInput:
        # The same bounds as at submission, in case settings changed since.
        return find_model(prediction.model).input_model.model_validate(
            prediction.input, context={"limits": InputLimits.from_settings(self.settings)}
        )

    def _prepare_detached(self, prediction: Prediction, ctx: DetachedContext) -> PreparedJob:
        return self.predictors.get(find_model(prediction.model)).prepare(self._validate(prediction), ctx)

    def _prepare(self, item: RunningPrediction, predictor: Predictor) -> None:
        try:
            item.ctx.check_interruptions()
            prefetched = self.prefetcher.take(item.prediction.id, item.attempt) if self.prefetcher else None
            if prefetched is not None:
                for line in prefetched.lines:
                    item.ctx.log(line)
                item.job = prefetched.job
            else:
                item.job = predictor.prepare(self._validate(item.prediction), item.ctx)
            self.timeline.record("prepared", item.prediction.id)
        except Exception as exc:
            self._settle(item, exc)

    def _generate(self, predictor: Predictor, group: list[RunningPrediction]) -> None:
        """One pipeline call for the group; a failure that is not an interruption reruns each item alone."""
        for item in group:
            self.timeline.record("gpu_start", item.prediction.id)
        try:
            outputs = predictor.generate([item.job for item in group], BatchStep(group, self._settle))
        except BatchStopped:
            return
        except Exception as exc:
            remaining = [item for item in group if not item.done]
            if len(remaining) > 1 and not isinstance(exc, HandedBack):
                log.warning("a batch of %d failed (%s); running each prediction alone", len(remaining), exc)
                for item in remaining:
                    self._generate(predictor, [item])
                return
            for item in remaining:
                self._settle(item, exc)
            return
        finally:
            for item in group:
                self.timeline.record("gpu_end", item.prediction.id)
        for item, item_outputs in zip(group, outputs, strict=True):
            if not item.done:
                self._upload_and_finish(item, item_outputs)

    def _upload_and_finish(self, item: RunningPrediction, outputs: list[Output]) -> None:
        """Upload the outputs, then end the prediction ``succeeded``: in line, or in the uploader's thread."""
        item.done = True
        predict_time = time.monotonic() - item.ctx.started

        def upload_and_finish() -> None:
            prediction, attempt = item.prediction, item.attempt
            try:
                encoding = encoding_of(find_model(prediction.model).input_model.model_validate(prediction.input))
                with metrics.timed_upload(prediction.model):
                    names = self._upload(prediction.id, outputs, encoding)
            except Exception as exc:
                self._settle(item, exc, predict_time=predict_time)
                return
            self.timeline.record("uploaded", prediction.id)
            # Whatever happens (Redis down as it finishes), the heartbeat stops: a prediction left
            # processing then loses its lease, and the reaper runs it again.
            try:
                if self.store.update_while_processing(prediction.id, if_attempt=attempt, output=names):
                    self.notifier.notify(prediction, "output")
                if self._finish(item, Status.SUCCEEDED, output=names, predict_time=predict_time) is None:
                    self._discard_stray_outputs(prediction.id, names)
            finally:
                self._close(item)

        self.uploader.submit(upload_and_finish)

    def _settle(self, item: RunningPrediction, exc: Exception, predict_time: float | None = None) -> Status | None:
        """End a prediction that stopped with ``exc``: canceled, failed, handed back, or left to another worker."""
        item.done = True
        prediction, attempt, ctx = item.prediction, item.attempt, item.ctx
        predict_time = time.monotonic() - ctx.started if predict_time is None else predict_time
        try:
            if isinstance(exc, LeaseLost):
                log.warning("prediction %s: lease lost, leaving it to the worker that took over", prediction.id)
                return None
            if isinstance(exc, HandedBack):
                return self._hand_back(prediction, attempt)
            if isinstance(exc, PredictionCanceled):
                ctx.log("Prediction canceled.")
                return self._finish(item, Status.CANCELED, predict_time=predict_time)
            log.error("prediction %s failed", prediction.id, exc_info=exc)
            ctx.log("".join(traceback.format_exception(exc)))
            return self._finish(item, Status.FAILED, error=describe_failure(exc), predict_time=predict_time)
        finally:
            self._close(item)

    def _close(self, item: RunningPrediction) -> None:
        self.timeline.record("finished", item.prediction.id)
        item.heartbeat.__exit__(None, None, None)

    def _discard_stray_outputs(self, prediction_id: str, names: list[str]) -> None:
        """Outputs this attempt stored but could not end its prediction with (it lost its lease while it
        uploaded): deleted where nothing can want them, as the prediction ended without them (canceled, say),
        had its data removed (``DELETE``) or is gone; left where another attempt runs it, or succeeded,
        since that attempt stores the same names."""
        current = self.store.get(prediction_id)
        if current is not None and not current.data_removed and current.status not in ENDED_WITHOUT_OUTPUTS:
            return
        log.warning("prediction %s: ended without this attempt's outputs; deleting them", prediction_id)
        for name in names:
            self.storage.delete(output_key(prediction_id, name))

    def _upload(self, prediction_id: str, outputs: list[Output], encoding: OutputEncoding) -> list[str]:
        """Store each output: images encoded in the prediction's ``output_format`` (``out-0.webp``, ...),
        files as they are (``embeddings.safetensors``)."""
        names = []
        for index, output in enumerate(outputs):
            file_name, data, content_type = self._stored(output, index, encoding)
            self.storage.put_bytes(output_key(prediction_id, file_name), data, content_type)
            names.append(file_name)
        return names

    @staticmethod
    def _stored(output: Output, index: int, encoding: OutputEncoding) -> tuple[str, bytes, str]:
        """The file name, bytes and content type output ``index`` is stored as."""
        if isinstance(output, NamedFile):
            return f"{output.name}.{output.extension}", output.data, output.content_type
        name, image = (output.name, output.image) if isinstance(output, NamedImage) else (f"out-{index}", output)
        return f"{name}.{encoding.extension}", encoding.encode(image), encoding.content_type

    def _hand_back(self, prediction: Prediction, attempt: int) -> Status | None:
        """Shutting down: back to the queue, without counting this run as a worker death."""
        if not self.store.transition(prediction.id, Status.STARTING, if_attempt=attempt, attempt=attempt - 1):
            return None
        self.store.append_log(
            prediction.id,
            "Worker shutting down: prediction handed back to the queue.\n",
            if_attempt=attempt - 1,
            if_status=Status.STARTING,
        )
        self.requeue(prediction.id, find_model(prediction.model).queue)
        log.info("prediction %s handed back to the queue", prediction.id)
        return Status.STARTING

    def _finish(self, item: RunningPrediction, status: Status, predict_time: float, **fields: object) -> Status | None:
        """End the prediction through the one lifecycle (``shared.predictions.lifecycle``): its status, or None
        when it could not (another attempt owns it now, or it had ended)."""
        ended = self.lifecycle.finish(
            item.prediction, status, attempt=item.attempt, predict_time=predict_time, **fields
        )
        return status if ended else None
