"""A fake of the runner's ``PredictContext`` for predictor tests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from PIL import Image

from models.kit.contract import PredictionCanceled
from shared.inputs.images import decode_image, load_image_bytes


class FakeContext:
    """A ``PredictContext`` that records log lines and steps, and cancels after ``cancel_after`` steps.

    File inputs come from ``files`` (URL -> bytes); those in ``uploaded`` act as uploaded files, whose
    digest is known without reading them. ``loaded`` records every file read.
    """

    def __init__(
        self,
        cancel_after: int | None = None,
        files: Mapping[str, bytes] | None = None,
        uploaded: frozenset[str] = frozenset(),
    ) -> None:
        self.lines: list[str] = []
        self.steps = 0
        self.cancel_after = cancel_after
        self.files = dict(files or {})
        self.uploaded = uploaded
        self.loaded: list[str] = []

    def log(self, line: str) -> None:
        self.lines.append(line)

    def load_image(self, uri: str) -> Image.Image:
        return decode_image(
            load_image_bytes(uri, timeout_s=5, max_bytes=10_000_000, allow_private=False), max_pixels=10_000_000
        )

    def file_digest(self, uri: str) -> str | None:
        return hashlib.sha256(self.files[uri]).hexdigest() if uri in self.uploaded else None

    def load_file(self, uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
        from worker.context import FileInputError

        self.loaded.append(uri)
        if uri not in self.files:
            raise FileInputError(f"fetching {uri} answered HTTP 404")
        if len(self.files[uri]) > max_bytes:
            raise FileInputError(f"{uri} is larger than {max_bytes} bytes")
        return self.files[uri]

    def step_callback(self) -> Callable[[Any, int, Any, dict], dict]:
        def on_step_end(pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
            self.steps += 1
            if self.cancel_after is not None and self.steps >= self.cancel_after:
                raise PredictionCanceled()
            return callback_kwargs

        return on_step_end


class SpyDetector:
    """Wraps a controlnet-aux detector and records the size of every image it is asked to read."""

    def __init__(self, detector: Callable[..., Image.Image]) -> None:
        self.detector = detector
        self.calls: list[tuple[int, int]] = []

    def __call__(self, image: Image.Image, **kwargs: Any) -> Image.Image:
        self.calls.append(image.size)
        return self.detector(image, **kwargs)
