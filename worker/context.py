"""The runner's side of ``PredictContext``: logs, bounded image loading, progress and cancel."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from PIL import Image
from tqdm import tqdm

from shared.inputs.images import ImageInputError, decode_image, fetch_url, load_image_bytes
from shared.predictions import deadlines
from shared.predictions.client_json import stored_input_name
from shared.predictions.lifecycle import Notifier
from shared.predictions.record import Prediction
from shared.predictions.store import PredictionStore
from shared.settings import Settings
from shared.storage.files import FileStore, file_id_from_url
from shared.storage.objects import input_key
from worker.interrupts import HandedBack, LeaseLost, PredictionCanceled, TimeLimitExceeded
from worker.step_gates import StepGate
from worker.timeline import Timeline

log = logging.getLogger(__name__)


def load_image_input(uri: str, prediction: Prediction, files: FileStore, settings: Settings) -> Image.Image:
    """Inputs stored at submission (``api.intake.image_staging``) and uploaded files of the prediction's
    owner are read from storage; anything else (small data URIs) is decoded, or fetched."""
    file_id = file_id_from_url(uri, prediction.base_url)
    stored_name = stored_input_name(prediction, uri)
    if stored_name is not None:
        data = b"".join(files.storage.open(input_key(prediction.id, stored_name)).body)
    elif uri in prediction.input_files:
        data = b"".join(files.storage.open(prediction.input_files[uri]).body)
    elif file_id is not None:
        uploaded = files.read(file_id, prediction.tenant)
        if uploaded is None:
            raise ImageInputError(f"file {file_id} does not exist or has expired")
        data = uploaded
    else:
        data = load_image_bytes(
            uri,
            timeout_s=settings.image_fetch_timeout_s,
            max_bytes=settings.image_fetch_max_bytes,
            allow_private=settings.image_fetch_allow_private,
            max_redirects=settings.image_fetch_max_redirects,
        )
    return decode_image(data, settings.image_max_pixels)


class FileInputError(ValueError):
    """A file input (e.g. ``lora_weights``) that could not be read; the message says why, for the user."""


def file_input_digest(uri: str, prediction: Prediction, files: FileStore) -> str | None:
    """An uploaded file's SHA-256, from its record (None for other URLs, or a file not the owner's)."""
    file_id = file_id_from_url(uri, prediction.base_url)
    record = files.get(file_id, prediction.tenant) if file_id is not None else None
    return record.sha256 if record is not None else None


def load_file_input(
    uri: str, prediction: Prediction, files: FileStore, settings: Settings, *, max_bytes: int, timeout_s: float
) -> bytes:
    """The bytes of a file input: an uploaded file of the prediction's owner from storage, or a URL
    fetched through the SSRF guard (every redirect checked), bounded in bytes and time."""
    file_id = file_id_from_url(uri, prediction.base_url)
    if file_id is not None:
        record = files.get(file_id, prediction.tenant)
        if record is None:
            raise FileInputError(f"file {file_id} does not exist or has expired")
        if record.size > max_bytes:
            raise FileInputError(f"file {file_id} is {record.size} bytes, more than the {max_bytes} allowed")
        stored = files.open(record)
        if stored is None:
            raise FileInputError(f"file {file_id} does not exist or has expired")
        return b"".join(stored.body)
    try:
        return fetch_url(
            uri,
            timeout_s=timeout_s,
            max_bytes=max_bytes,
            allow_private=settings.image_fetch_allow_private,
            max_redirects=settings.image_fetch_max_redirects,
        )
    except ImageInputError as exc:  # fetch_url speaks of images; the message itself holds for any file
        raise FileInputError(str(exc)) from None


class RunContext:
    def __init__(
        self,
        prediction: Prediction,
        store: PredictionStore,
        notifier: Notifier,
        files: FileStore,
        settings: Settings,
        lease_lost: threading.Event,
        hand_back: threading.Event,
        timeline: Timeline | None = None,
        attempt: int | None = None,
    ) -> None:
        self.prediction = prediction
        # The attempt this context runs: its log lines are written only while it is the current one.
        self.attempt = attempt
        self.prediction_id = prediction.id
        self.store = store
        self.notifier = notifier
        self.files = files
        self.settings = settings
        self.lease_lost = lease_lost
        self.hand_back = hand_back
        self.started = time.monotonic()
        self.time_limit_s = settings.time_limit_s(prediction.model)
        self.timeline = timeline or Timeline()
        # Tests only (KILN_STEP_GATES): where the prediction waits after its first step.
        self.gate = StepGate.of(prediction, settings, store.redis)

    def log(self, line: str) -> None:
        """Best effort: a Redis restart mid-prediction costs log lines, not the prediction."""
        try:
            if not self.store.append_log(self.prediction_id, line.rstrip("\n") + "\n", if_attempt=self.attempt):
                return  # no longer this attempt's (see ``append_log``): check_interruptions says why
            self.notifier.notify(self.prediction, "logs")
        except redis.RedisError as exc:
            log.warning("prediction %s: log line not recorded: %s", self.prediction_id, exc)

    def check_interruptions(self) -> None:
        """Stop the prediction if it was canceled, ran out of time, reached its deadline, lost its lease
        or must be handed back."""
        if self.lease_lost.is_set():
            raise LeaseLost()
        if self.hand_back.is_set():
            raise HandedBack()
        if time.monotonic() - self.started > self.time_limit_s:
            raise TimeLimitExceeded(self.time_limit_s)
        if deadlines.passed(self.prediction.deadline):
            self.log("Deadline reached (Cancel-After).")
            raise PredictionCanceled()
        try:
            canceled = self.store.cancel_requested(self.prediction_id)
        except redis.RedisError as exc:  # Redis restarting: check again at the next step
            log.warning("prediction %s: cancel flag not readable: %s", self.prediction_id, exc)
            canceled = False
        if canceled:
            raise PredictionCanceled()

    def load_image(self, uri: str) -> Image.Image:
        self.timeline.record("fetch", self.prediction_id)
        return load_image_input(uri, self.prediction, self.files, self.settings)

    def file_digest(self, uri: str) -> str | None:
        return file_input_digest(uri, self.prediction, self.files)

    def load_file(self, uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
        self.timeline.record("fetch", self.prediction_id)
        return load_file_input(
            uri, self.prediction, self.files, self.settings, max_bytes=max_bytes, timeout_s=timeout_s
        )

    def step_callback(self) -> Callable[[Any, int, Any, dict], dict]:
        started = time.monotonic()

        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            self.on_step(pipe, step, started)
            return callback_kwargs

        return on_step_end

    def on_step(self, pipe: Any, step: int, started: float) -> None:
        """One denoising step done: the progress line tqdm prints on Replicate, then the interruption checks."""
        self.log(tqdm.format_meter(step + 1, getattr(pipe, "num_timesteps", None), time.monotonic() - started))
        self.check_interruptions()
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.log(f"Waiting at step gate {gate.name}.")
            gate.wait(self.check_interruptions)
