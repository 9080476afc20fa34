"""The predictor contract: what a model folder's ``predictor.py`` implements.

A ``Predictor`` loads its weights once in ``setup()``; the runner then drives each prediction in two
halves, so that a worker can overlap and batch them: ``prepare()`` (fetch, decode, preprocess, pick
the seed: one prediction, may run in a side thread) and ``generate()`` (the denoising loop, for one
or several prepared jobs whose ``group_key`` is equal). ``batch_key()`` says which queued predictions
may share a batch at all. The runner owns the prediction's lifecycle (status, logs, cancel,
uploads); a predictor gets a ``PredictContext`` for the few things it needs from it.

A minimal predictor (it paints flat squares; a real one loads a diffusers pipeline in ``setup()``
and passes ``step_callback`` to it as ``callback_on_step_end``):

>>> from dataclasses import dataclass
>>> from PIL import Image
>>> from models.kit.contract import PreparedJob, Predictor, resolve_seed
>>> from shared.inputs.schema import ModelInput
>>> from shared.settings import Settings
>>> class Inputs(ModelInput):
...     colour: str = "red"
...     size: int = 8
...     seed: int | None = None
>>> @dataclass(frozen=True)
... class Job(PreparedJob):
...     colour: str
...     size: int
...
...     @property
...     def group_key(self):
...         return self.size
>>> def paint(colours, size, callback_on_step_end):
...     callback_on_step_end(None, 0, 0, {})  # one denoising step
...     return [Image.new("RGB", (size, size), colour) for colour in colours]
>>> class Flat(Predictor[Inputs, Job]):
...     def setup(self):
...         self.pipeline = paint
...
...     def batch_key(self, inputs):
...         return inputs.size
...
...     def prepare(self, inputs, ctx):
...         return Job(seed=resolve_seed(inputs.seed, ctx), colour=inputs.colour, size=inputs.size)
...
...     def generate(self, jobs, step_callback):
...         images = self.pipeline([job.colour for job in jobs], jobs[0].size, callback_on_step_end=step_callback)
...         return [[image] for image in images]
>>> class Context:  # the runner's context; this predictor uses only log and step_callback
...     def log(self, line):
...         print(line)
...
...     def step_callback(self):
...         return lambda pipe, step, timestep, kwargs: kwargs
>>> predictor = Flat(Settings())
>>> predictor.setup()
>>> [image] = predictor.predict(Inputs(colour="blue", seed=7), Context())
Using seed: 7
>>> image.size, image.getpixel((0, 0))
((8, 8), (0, 0, 255))
"""

from __future__ import annotations

import abc
import random
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from PIL import Image

from shared.inputs.schema import ModelInput
from shared.settings import Settings

InputT = TypeVar("InputT", bound=ModelInput)
JobT = TypeVar("JobT", bound="PreparedJob")

StepCallback = Callable[[Any, int, Any, dict], dict]


@dataclass(frozen=True)
class NamedImage:
    """An output with a name of its own (e.g. ``control-map``); plain images are named ``out-N``."""

    name: str
    image: Image.Image


@dataclass(frozen=True)
class NamedFile:
    """An output that is not an image (e.g. ``embeddings``): stored as is as ``<name>.<extension>``,
    served with ``content_type``; the prediction's ``output_format`` does not apply to it."""

    name: str
    data: bytes
    extension: str
    content_type: str


Output = Image.Image | NamedImage | NamedFile


class PredictionCanceled(Exception):
    """Raised from a step callback when the prediction was canceled; the runner ends it ``canceled``."""


@dataclass(frozen=True)
class PreparedJob:
    """One prediction with its inputs fetched, decoded and preprocessed: ready for the denoising loop.

    Jobs whose ``group_key`` is equal can run as one batched pipeline call.
    """

    seed: int

    @property
    def group_key(self) -> Hashable:
        raise NotImplementedError


class PredictContext(Protocol):
    """What the runner offers a running prediction."""

    def log(self, line: str) -> None:
        """Append one line to the prediction's ``logs``."""

    def load_image(self, uri: str) -> Image.Image:
        """Fetch and decode an image input (bounded in bytes, time and pixels) as RGB."""

    def file_digest(self, uri: str) -> str | None:
        """The SHA-256 (hex) of a file input when it is known without fetching it (an uploaded file's), else None."""

    def load_file(self, uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
        """The bytes of a file input (an uploaded file of the prediction's owner, or an https URL fetched
        through the SSRF guard), at most ``max_bytes`` within ``timeout_s``; ``FileInputError`` says why not."""

    def step_callback(self) -> Callable[[Any, int, Any, dict], dict]:
        """A diffusers ``callback_on_step_end``: logs a progress line per step and raises
        ``PredictionCanceled`` when the prediction was canceled."""


class Predictor(abc.ABC, Generic[InputT, JobT]):
    """One model: load weights once in ``setup()``, then serve many predictions.

    A prediction runs in two halves so that a worker can overlap and batch them: ``prepare()``
    (fetch, decode, preprocess: may run in a side thread while another job denoises) and
    ``generate()`` (the denoising loop, for one or several prepared jobs at once).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def setup(self) -> None:
        """Load the pipeline (tiny or full profile) onto the device. Called once per worker."""

    def batch_key(self, inputs: InputT) -> Hashable | None:
        """What must be equal for two predictions to share a batch (None: never batched). Inputs that
        differ per image (prompts, images, seeds) stay out of it."""
        return None

    @abc.abstractmethod
    def prepare(self, inputs: InputT, ctx: PredictContext) -> JobT:
        """Fetch and decode the image inputs, run the preprocessors, pick the seed."""

    @abc.abstractmethod
    def generate(self, jobs: Sequence[JobT], step_callback: StepCallback) -> list[list[Output]]:
        """Denoise the jobs (all with the same ``group_key``) in one pipeline call; outputs per job, in order.

        Image ``j`` of a job is drawn from its own generator seeded ``seed + j``, so a job gives the
        same pixels alone or in any batch.
        """

    def predict(self, inputs: InputT, ctx: PredictContext) -> list[Output]:
        """Run one prediction and return the output images, in order."""
        [outputs] = self.generate([self.prepare(inputs, ctx)], ctx.step_callback())
        return outputs


def resolve_seed(seed: int | None, ctx: PredictContext) -> int:
    """The seed to use: the user's, or a random one; logged like Replicate does."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    ctx.log(f"Using seed: {seed}")
    return seed
