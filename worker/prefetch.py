"""Prepare the next queued prediction while the GPU denoises the current one.

The prefetcher peeks at what this worker will be handed next and, in one side thread, validates
its input, fetches and decodes its images and runs its preprocessing (depth or pose extraction,
image-prompt encoding), keeping the result keyed by prediction id and the attempt it will run
as. It claims nothing: the prediction may still be canceled or taken by another worker, and then
the work is simply dropped. Log lines written while preparing (the seed, detector timings) are
kept and replayed into the prediction's logs when it starts.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.settings import Settings
from shared.storage.files import FileStore
from worker.context import file_input_digest, load_file_input, load_image_input
from worker.timeline import Timeline

log = logging.getLogger(__name__)


@dataclass
class DetachedContext:
    """A ``PredictContext`` for preparing a prediction before it starts: logs are kept, not written."""

    prediction: Prediction
    files: FileStore
    settings: Settings
    timeline: Timeline
    lines: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def load_image(self, uri: str) -> Image.Image:
        self.timeline.record("fetch", self.prediction.id)
        return load_image_input(uri, self.prediction, self.files, self.settings)

    def file_digest(self, uri: str) -> str | None:
        return file_input_digest(uri, self.prediction, self.files)

    def load_file(self, uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
        self.timeline.record("fetch", self.prediction.id)
        return load_file_input(
            uri, self.prediction, self.files, self.settings, max_bytes=max_bytes, timeout_s=timeout_s
        )

    def step_callback(self) -> Callable[[Any, int, Any, dict], dict]:
        raise RuntimeError("a prediction being prefetched does not denoise")


@dataclass(frozen=True)
class Prefetched:
    job: Any
    lines: list[str]


# Prepares a queued prediction: (record, context) -> the predictor's prepared job.
Prepare = Callable[[Prediction, DetachedContext], Any]


class Prefetcher:
    def __init__(
        self,
        store: PredictionStore,
        files: FileStore,
        settings: Settings,
        timeline: Timeline,
        upcoming: Callable[[int], list[str]],
        prepare: Prepare,
        depth: int = 1,
    ) -> None:
        self.store = store
        self.files = files
        self.settings = settings
        self.timeline = timeline
        self.upcoming = upcoming
        self.prepare = prepare
        # How many upcoming predictions to hold prepared (each holds decoded images and tensors).
        self.depth = depth
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._entries: OrderedDict[str, tuple[int, Future]] = OrderedDict()
        self._lock = threading.Lock()

    def schedule(self, running: Iterable[str]) -> None:
        """Start preparing the next queued predictions that are not among ``running``."""
        skip = set(running)
        try:
            wanted = [pid for pid in self.upcoming(self.depth + len(skip)) if pid not in skip][: self.depth]
        except Exception as exc:  # a peek that fails costs the overlap, never the running job
            log.warning("could not peek at the queue to prefetch: %s", exc)
            return
        with self._lock:
            for stale in [pid for pid in self._entries if pid not in wanted]:
                self._entries.pop(stale)[1].cancel()
        for prediction_id in wanted:
            with self._lock:
                if prediction_id in self._entries:
                    continue
            prediction = self.store.get(prediction_id)
            if prediction is None or prediction.status is not Status.STARTING:
                continue
            future = self._executor.submit(self._prepare, prediction)
            with self._lock:
                self._entries[prediction_id] = (prediction.attempt + 1, future)

    def _prepare(self, prediction: Prediction) -> Prefetched:
        ctx = DetachedContext(prediction, self.files, self.settings, self.timeline)
        job = self.prepare(prediction, ctx)
        self.timeline.record("prefetched", prediction.id)
        return Prefetched(job, ctx.lines)

    def take(self, prediction_id: str, attempt: int) -> Prefetched | None:
        """The prepared job for this prediction's run (waiting for it if still in flight), or None when
        there is none or preparing it failed (the runner then prepares it itself and reports errors)."""
        with self._lock:
            entry = self._entries.pop(prediction_id, None)
        if entry is None or entry[0] != attempt:
            return None
        try:
            return entry[1].result()
        except Exception as exc:
            log.info("prefetch of %s failed (%s); preparing it again in line", prediction_id, exc)
            return None

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
