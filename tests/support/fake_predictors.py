"""A fake model for the runner tests: a predictor that keeps the contract (``models.kit.contract``)
with no pipeline behind it, like cog's ``count_up.py`` test predictors.

``FakePredictor`` paints each output from its prompt and seed (``fake_image``: output ``j`` of a
prediction is ``fake_image(prompt, seed + j, size)``, alone or in any batch), records every batch it
is given, and calls the step callback ``steps`` times the way a denoising loop does, so progress
lines, cancels, time limits and step gates work as with a real model. An input can make it slow
(``step_s`` per step) or make it fail in ``prepare`` or ``generate``. ``FAKE_SPEC`` is its
``ModelSpec``, added to the model registry by ``registered()``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from PIL import Image
from pydantic import Field

from models.kit.contract import Output, PredictContext, Predictor, PreparedJob, StepCallback, resolve_seed
from models.registry import MODELS
from shared.inputs.output_formats import OutputFormat, output_format_field, output_quality_field
from shared.inputs.schema import ImageURI, ModelInput
from shared.model_spec import ModelSpec
from tests.support import data_uri, png_bytes

FAKE_MODEL = "test/fake"


class FakeInput(ModelInput):
    prompt: str = ""
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    num_outputs: int = Field(default=1, ge=1, le=4)
    steps: int = Field(default=2, ge=1, le=50)
    width: int = Field(default=32, ge=8, le=256)
    height: int = Field(default=32, ge=8, le=256)
    # Fetched through the context in ``prepare``, as a real model's image input is; it does not change the pixels.
    input_image: ImageURI | None = None
    # Seconds each step takes.
    step_s: float = Field(default=0.0, ge=0.0, le=5.0)
    fail: Literal["prepare", "generate"] | None = None
    output_format: OutputFormat = output_format_field(order=10)
    output_quality: int = output_quality_field(order=11)


FAKE_SPEC = ModelSpec(
    owner="test",
    name="fake",
    description="Paints images from the prompt and seed, with no model behind it.",
    input_model=FakeInput,
    queue="gpu.fake",
    predictor="tests.support.fake_predictors:FakePredictor",
    weights_settings=(),
)


# An image input: fetched by ``prepare`` through the context (the prefetch tests watch for that).
IMAGE = data_uri(png_bytes(16, 16, seed=1))
# Three predictions that can share a batch and that a batch must keep apart: prompt, seed, outputs.
INPUTS = [
    {"prompt": "a red house", "seed": 7, "input_image": IMAGE},
    {"prompt": "a blue dog", "seed": 8, "num_outputs": 2, "input_image": IMAGE},
    {"prompt": "", "seed": 9},
]


def fake_image(prompt: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """Smooth ramps (lossy formats keep them close) in colours that follow from the prompt and seed:
    another prompt or seed changes nearly every pixel."""
    red, green, blue = hashlib.sha256(f"{prompt}\0{seed}".encode()).digest()[:3]
    width, height = size
    across = np.linspace(0, 127, width)[None, :].repeat(height, axis=0)
    down = np.linspace(0, 127, height)[:, None].repeat(width, axis=1)
    channels = [red // 2 + across, green // 2 + down, blue // 2 + (across + down) / 2]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8))


@dataclass(frozen=True)
class FakeJob(PreparedJob):
    prompt: str
    num_outputs: int
    size: tuple[int, int]
    steps: int
    step_s: float
    fail: str | None

    @property
    def group_key(self) -> Hashable:
        return self.size, self.steps


class FakePredictor(Predictor[FakeInput, FakeJob]):
    """Predictions with the same size and step count share a batch; ``batches`` holds every batch's jobs."""

    def setup(self) -> None:
        self.batches: list[list[FakeJob]] = []
        # Steps run so far, over every batch.
        self.steps_run = 0
        # A test's hook, called with the step's index before each step's callback.
        self.on_step: Callable[[int], None] = lambda step: None
        # Read by the runner's progress lines (``tqdm``'s total), as on a diffusers pipeline.
        self.num_timesteps = 0

    def batch_key(self, inputs: FakeInput) -> Hashable:
        return inputs.width, inputs.height, inputs.steps

    def prepare(self, inputs: FakeInput, ctx: PredictContext) -> FakeJob:
        if inputs.input_image is not None:
            ctx.load_image(inputs.input_image)
        if inputs.fail == "prepare":
            raise ValueError("told to fail in prepare")
        return FakeJob(
            seed=resolve_seed(inputs.seed, ctx),
            prompt=inputs.prompt,
            num_outputs=inputs.num_outputs,
            size=(inputs.width, inputs.height),
            steps=inputs.steps,
            step_s=inputs.step_s,
            fail=inputs.fail,
        )

    def generate(self, jobs: Sequence[FakeJob], step_callback: StepCallback) -> list[list[Output]]:
        self.batches.append(list(jobs))
        if any(job.fail == "generate" for job in jobs):
            raise RuntimeError("told to fail in generate")
        self.num_timesteps = jobs[0].steps
        for step in range(jobs[0].steps):
            time.sleep(max(job.step_s for job in jobs))
            self.steps_run += 1
            self.on_step(step)
            step_callback(self, step, step, {})
        return [[fake_image(job.prompt, job.seed + j, job.size) for j in range(job.num_outputs)] for job in jobs]


def expected_pixels(**fields: object) -> list[np.ndarray]:
    """What ``FakePredictor`` paints for a prediction with these inputs (a seed among them), output by output."""
    inputs = FakeInput.model_validate(fields)
    assert inputs.seed is not None, "a random seed paints unknown pixels"
    size = (inputs.width, inputs.height)
    return [np.asarray(fake_image(inputs.prompt, inputs.seed + j, size)) for j in range(inputs.num_outputs)]


@contextmanager
def registered() -> Iterator[ModelSpec]:
    """``FAKE_SPEC`` in the model registry for the duration of the block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODELS, FAKE_SPEC.ref, FAKE_SPEC)
        yield FAKE_SPEC
