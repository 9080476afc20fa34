"""The predictor contract: a predictor knows only ``setup()`` and ``predict()``.

The runner owns the prediction's lifecycle (status, logs, cancel, uploads); a predictor gets a
``PredictContext`` for the few things it needs from it.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from typing import Any, Callable, Generic, Protocol, TypeVar

from PIL import Image

from shared.models.base import ModelInput
from shared.settings import Settings

InputT = TypeVar("InputT", bound=ModelInput)


@dataclass(frozen=True)
class NamedImage:
    """An output with a name of its own (e.g. ``control-map``); plain images are named ``out-N``."""

    name: str
    image: Image.Image


Output = Image.Image | NamedImage


class PredictionCanceled(Exception):
    """Raised from a step callback when the prediction was canceled; the runner ends it ``canceled``."""


class PredictContext(Protocol):
    """What the runner offers a running prediction."""

    def log(self, line: str) -> None:
        """Append one line to the prediction's ``logs``."""

    def load_image(self, uri: str) -> Image.Image:
        """Fetch and decode an image input (bounded in bytes, time and pixels) as RGB."""

    def step_callback(self) -> Callable[[Any, int, Any, dict], dict]:
        """A diffusers ``callback_on_step_end``: logs a progress line per step and raises
        ``PredictionCanceled`` when the prediction was canceled."""


class Predictor(abc.ABC, Generic[InputT]):
    """One model: load weights once in ``setup()``, then serve many ``predict()`` calls."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def setup(self) -> None:
        """Load the pipeline (tiny or full profile) onto the device. Called once per worker."""

    @abc.abstractmethod
    def predict(self, inputs: InputT, ctx: PredictContext) -> list[Output]:
        """Run one prediction and return the output images, in order."""


def resolve_seed(seed: int | None, ctx: PredictContext) -> int:
    """The seed to use: the user's, or a random one; logged like Replicate does."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    ctx.log(f"Using seed: {seed}")
    return seed
