"""``Depth2ImgPredictor`` on the CPU with the tiny weights: the real pipeline, noise images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image

from models.kit.contract import PredictionCanceled
from models.sd2_depth2img.fake_weights import ensure_tiny_sd2_depth2img
from models.sd2_depth2img.predictor import SCHEDULERS, Depth2ImgPredictor, output_size
from models.sd2_depth2img.schema import Depth2ImgInput
from shared.inputs.images import ImageInputError
from shared.inputs.schema import Scheduler
from shared.settings import Settings
from tests.support import data_uri, png_bytes
from tests.support.fakes import FakeContext
from tests.support.worker_inputs import FAST, INPUT_64, INPUTS, gradient, png_uri


@pytest.fixture(scope="module")
def predictor(make_settings: Callable[..., Settings]) -> Depth2ImgPredictor:
    predictor = Depth2ImgPredictor(make_settings())
    predictor.setup()
    return predictor


def run(predictor: Depth2ImgPredictor, ctx: FakeContext | None = None, **fields: Any) -> list[Image.Image]:
    values = {"input_image": INPUT_64, "prompt": "a red house", "num_inference_steps": 4, "seed": 7} | fields
    return predictor.predict(Depth2ImgInput(**values), ctx or FakeContext())


def pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


def same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(pixels(a), pixels(b), strict=True))


def test_setup_loads_the_tiny_folder_with_from_pretrained(predictor: Depth2ImgPredictor, weights_dir) -> None:
    pipe = predictor.pipe
    assert isinstance(pipe, StableDiffusionDepth2ImgPipeline)
    assert pipe.name_or_path == str(ensure_tiny_sd2_depth2img(weights_dir))
    assert pipe.unet.config.in_channels == 5
    assert pipe.device.type == "cpu" and pipe.unet.dtype.is_floating_point and pipe.unet.dtype.itemsize == 4


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((200, 130), 1024, (192, 128)),
        ((64, 64), 1024, (64, 64)),
        ((50, 40), 1024, (64, 64)),
        ((3000, 1500), 1024, (1024, 512)),
        ((1500, 3000), 1000, (448, 960)),
    ],
)
def test_output_size_keeps_aspect_fits_the_cap_and_rounds_down_to_64(size, max_side, expected) -> None:
    assert output_size(*size, max_side) == expected


def test_output_follows_the_input_size(predictor: Depth2ImgPredictor) -> None:
    [image] = run(predictor, input_image=data_uri(png_bytes(200, 130)))
    assert image.size == (192, 128)


def test_output_is_capped_by_max_image_side(make_settings: Callable[..., Settings]) -> None:
    capped = Depth2ImgPredictor(make_settings(max_image_side=128))
    capped.setup()
    [image] = run(capped, input_image=data_uri(png_bytes(300, 200)))
    assert image.size == (128, 64)


def test_num_outputs_gives_that_many_distinct_images(predictor: Depth2ImgPredictor) -> None:
    images = run(predictor, num_outputs=3)
    assert len(images) == 3
    assert all(image.size == (64, 64) for image in images)
    assert not np.array_equal(*pixels(images[:2]))


def test_same_seed_gives_identical_pixels_and_another_seed_differs(predictor: Depth2ImgPredictor) -> None:
    first, again, other = run(predictor, seed=11), run(predictor, seed=11), run(predictor, seed=12)
    assert same(first, again)
    assert not same(first, other)


@pytest.mark.parametrize(
    "change",
    [{"prompt": "a blue dog"}, {"negative_prompt": "a red house"}, {"guidance_scale": 2.0}, {"prompt_strength": 0.5}],
    ids=lambda change: next(iter(change)),
)
def test_each_generation_input_reaches_the_pipeline(predictor: Depth2ImgPredictor, change: dict) -> None:
    assert not same(run(predictor), run(predictor, **change))


def test_the_seed_is_logged_and_a_missing_seed_is_random(predictor: Depth2ImgPredictor) -> None:
    ctx = FakeContext()
    run(predictor, ctx, seed=1234)
    assert "Using seed: 1234" in ctx.lines
    random_ctx = FakeContext()
    run(predictor, random_ctx, seed=None)
    [line] = [line for line in random_ctx.lines if line.startswith("Using seed: ")]
    assert line != "Using seed: 1234"


def test_every_scheduler_runs_and_changes_the_result(predictor: Depth2ImgPredictor) -> None:
    outputs = {}
    for scheduler in Scheduler:
        [image] = run(predictor, scheduler=scheduler.value, prompt_strength=1.0)
        assert type(predictor.pipe.scheduler) is SCHEDULERS[scheduler]
        assert image.size == (64, 64)
        outputs[scheduler] = np.asarray(image)
    distinct = {array.tobytes() for array in outputs.values()}
    assert len(distinct) == len(Scheduler)


def test_the_step_callback_runs_once_per_denoising_step(predictor: Depth2ImgPredictor) -> None:
    ctx = FakeContext()
    run(predictor, ctx, scheduler="DDIM", num_inference_steps=8, prompt_strength=0.5)
    assert ctx.steps == 4


def test_a_canceling_step_callback_stops_the_denoising_loop(predictor: Depth2ImgPredictor) -> None:
    ctx = FakeContext(cancel_after=2)
    with pytest.raises(PredictionCanceled):
        run(predictor, ctx, scheduler="DDIM", num_inference_steps=10, prompt_strength=1.0)
    assert ctx.steps == 2


def test_depth_image_replaces_the_estimated_depth(predictor: Depth2ImgPredictor) -> None:
    estimated = run(predictor)
    across = run(predictor, depth_image=png_uri(gradient(64, 64, horizontal=True)))
    down = run(predictor, depth_image=png_uri(gradient(64, 64, horizontal=False)))
    assert not same(estimated, across)
    assert not same(across, down)


def test_depth_image_of_any_size_is_fitted_to_the_output(predictor: Depth2ImgPredictor) -> None:
    [image] = run(predictor, input_image=data_uri(png_bytes(128, 64)), depth_image=png_uri(gradient(37, 90, True)))
    assert image.size == (128, 64)


def test_a_flat_depth_image_is_refused(predictor: Depth2ImgPredictor) -> None:
    with pytest.raises(ImageInputError, match="depth_image"):
        run(predictor, depth_image=png_uri(Image.new("L", (64, 64), 200)))


# --- Batching --------------------------------------------------------------------------------------


def assert_same_pixels(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float rounding: kernels for another batch size may round a last bit differently
    (on CPU too), which can move a rare channel value by one level. A wrong seed, row or input
    changes nearly every value by far more."""
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (difference.max(), (difference > 0).mean())


def alone(predictor: Depth2ImgPredictor, fields: dict) -> list[np.ndarray]:
    return pixels(predictor.predict(Depth2ImgInput(**FAST | fields), FakeContext()))


def test_a_batch_gives_every_item_the_pixels_it_gets_alone(predictor: Depth2ImgPredictor) -> None:
    inputs = [Depth2ImgInput(**FAST | fields) for fields in INPUTS]
    jobs = [predictor.prepare(one, FakeContext()) for one in inputs]
    assert len({predictor.batch_key(one) for one in inputs}) == 1
    assert len({job.group_key for job in jobs}) == 1
    batched = predictor.generate(jobs, FakeContext().step_callback())
    for fields, outputs in zip(INPUTS, batched, strict=True):
        expected = alone(predictor, fields)
        assert len(outputs) == len(expected) == fields.get("num_outputs", 1)
        for image, wanted in zip(outputs, expected, strict=True):
            assert_same_pixels(np.asarray(image), wanted)
    # Each item really is different: the batch did not hand everyone the same rows.
    assert not np.array_equal(np.asarray(batched[0][0]), np.asarray(batched[1][0]))
    assert not np.array_equal(np.asarray(batched[1][0]), np.asarray(batched[1][1]))


def test_image_j_of_a_prediction_is_what_seed_plus_j_gives_alone(predictor: Depth2ImgPredictor) -> None:
    first, second = alone(predictor, INPUTS[0] | {"num_outputs": 2})
    assert_same_pixels(second, alone(predictor, INPUTS[0] | {"seed": 8})[0])
    assert_same_pixels(first, alone(predictor, INPUTS[0])[0])
    assert not np.array_equal(first, second)
