"""The SDXL + IP-Adapter + ControlNet predictors on the CPU with the tiny weights: real pipelines, noise images.

Most calls pass ``control_image`` so that the detectors (a second or two each on this CPU) run only
in the tests about them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from diffusers import StableDiffusionXLControlNetPipeline
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from PIL import Image
from skimage import data as photos

from models.kit.contract import NamedImage, PredictionCanceled
from models.kit.schedulers import SCHEDULERS
from models.sdxl_family.fake_weights.layout_configs import tiny_configs
from models.sdxl_family.predictor import IPAdapterXLPredictor, detect_resolution
from models.sdxl_family.schema import IPAdapterXLInput
from models.sdxl_family.weights import xl_weights
from shared.inputs.schema import Scheduler
from tests.support import data_uri, png_bytes
from tests.support.fakes import FakeContext, SpyDetector


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def gradient(width: int, height: int, horizontal: bool = True) -> Image.Image:
    ramp = np.linspace(0, 255, width if horizontal else height, dtype=np.uint8)
    grid = np.tile(ramp, (height, 1)) if horizontal else np.tile(ramp[:, None], (1, width))
    return Image.fromarray(grid, mode="L").convert("RGB")


ACROSS = png_uri(gradient(64, 64, horizontal=True))
DOWN = png_uri(gradient(64, 64, horizontal=False))
IP_IMAGE = data_uri(png_bytes(64, 64, seed=1))
OTHER_IP_IMAGE = data_uri(png_bytes(64, 64, seed=2))
ASTRONAUT = png_uri(Image.fromarray(photos.astronaut()))
COFFEE = png_uri(Image.fromarray(photos.coffee()))


@pytest.fixture(params=["depth", "openpose"])
def predictor(request: pytest.FixtureRequest) -> IPAdapterXLPredictor:
    return request.getfixturevalue(request.param)


def run(predictor: IPAdapterXLPredictor, ctx: FakeContext | None = None, **fields: Any) -> list:
    values = {
        "control_image": ACROSS, "ip_image": IP_IMAGE, "prompt": "a red house", "num_inference_steps": 4,
        "width": 64, "height": 64, "seed": 7,
    } | fields  # fmt: skip
    return predictor.predict(IPAdapterXLInput(**values), ctx or FakeContext())


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


def visibly_different(a: list, b: list) -> bool:
    """More than rounding noise apart: on average half a grey level or more per channel."""
    pixels = [np.asarray(image, dtype=float) for image in (*a, *b)]
    return np.abs(np.concatenate(pixels[: len(a)]) - np.concatenate(pixels[len(a) :])).mean() > 0.5


def test_the_pool_serves_both_models_from_one_sdxl_base(depth, openpose) -> None:
    for part in (
        "unet",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "tokenizer",
        "tokenizer_2",
        "image_encoder",
        "feature_extractor",
    ):
        assert getattr(depth.pipe, part) is getattr(openpose.pipe, part), part
    assert depth.pipe.controlnet is not openpose.pipe.controlnet
    assert depth.pipe.unet is openpose.pipe.unet


def test_setup_loads_the_tiny_layout_with_the_ip_adapter_once(depth, openpose) -> None:
    for predictor in (depth, openpose):
        pipe = predictor.pipe
        assert isinstance(pipe, StableDiffusionXLControlNetPipeline)
        assert pipe.device.type == "cpu" and pipe.unet.dtype == pipe.controlnet.dtype and pipe.unet.dtype.itemsize == 4
        assert pipe.unet.config.cross_attention_dim == tiny_configs().unet["cross_attention_dim"]
        assert pipe.image_encoder is not None and pipe.feature_extractor is not None
    cross_attention = [p for name, p in depth.pipe.unet.attn_processors.items() if name.endswith("attn2.processor")]
    assert cross_attention and all(isinstance(p, IPAdapterAttnProcessor2_0) for p in cross_attention)


def test_the_tiny_profile_loads_the_built_folders(make_settings, weights_dir) -> None:
    weights = xl_weights(make_settings())
    assert weights.base == str(weights_dir / "tiny" / "sdxl" / "sdxl-base")
    assert weights.controlnets["openpose"] == str(weights_dir / "tiny" / "sdxl" / "controlnet-openpose")
    assert weights.annotators == str(weights_dir / "tiny" / "annotators")
    assert weights.vae is None


@pytest.mark.parametrize(("device", "vae"), [("cpu", None), ("cuda", "org/vae-fp16")])
def test_the_full_profile_uses_the_configured_references_and_builds_nothing(make_settings, tmp_path, device, vae):
    settings = make_settings(
        weights_profile="full",
        weights_dir=tmp_path,
        device=device,
        sdxl_base_weights="org/xl",
        sdxl_vae_fp16_weights="org/vae-fp16",
        controlnet_depth_xl_weights="org/depth",
        ip_adapter_weights="org/ip",
        annotators_weights="org/annotators",
    )
    weights = xl_weights(settings)
    assert (weights.base, weights.vae, weights.ip_adapter, weights.annotators) == (
        "org/xl",
        vae,
        "org/ip",
        "org/annotators",
    )
    assert weights.controlnets["depth"] == "org/depth"
    assert weights.controlnets["openpose"] == settings.controlnet_openpose_xl_weights
    assert list(tmp_path.iterdir()) == []


def test_same_seed_gives_identical_pixels_and_another_seed_differs(predictor) -> None:
    first, again, other = run(predictor, seed=11), run(predictor, seed=11), run(predictor, seed=12)
    assert same(first, again)
    assert not same(first, other)


@pytest.mark.parametrize(
    "change",
    [
        {"control_image": DOWN},
        {"controlnet_scale": 0.2},
        {"ip_image": OTHER_IP_IMAGE},
        {"ip_adapter_scale": 0.1},
        {"prompt": "a blue dog"},
        {"negative_prompt": "a red house"},
        {"guidance_scale": 2.0},
    ],
    ids=lambda change: next(iter(change)),
)
def test_each_conditioning_input_changes_the_pixels(predictor, change: dict) -> None:
    assert visibly_different(run(predictor), run(predictor, **change))


def test_the_ip_adapter_scale_is_set_per_call_although_the_unet_is_shared(depth, openpose) -> None:
    before = run(openpose)
    run(depth, ip_adapter_scale=0.0)
    assert same(before, run(openpose))


def test_output_size_is_width_by_height_and_num_outputs_gives_distinct_images(predictor) -> None:
    images = run(predictor, width=96, height=64, num_outputs=2)
    assert [image.size for image in images] == [(96, 64), (96, 64)]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


def test_return_control_map_adds_the_map_last_at_the_output_size(predictor) -> None:
    *images, control = run(predictor, width=96, height=64, num_outputs=2, return_control_map=True)
    assert len(images) == 2 and all(isinstance(image, Image.Image) for image in images)
    assert isinstance(control, NamedImage) and control.name == "control-map"
    assert control.image.size == (96, 64) and control.image.mode == "RGB"
    grey = np.asarray(control.image.convert("L"), dtype=float)
    assert grey[:, :8].mean() < 40 < 215 < grey[:, -8:].mean()
    assert not any(isinstance(output, NamedImage) for output in run(predictor))


def test_control_image_skips_the_detector(predictor, monkeypatch) -> None:
    spy = SpyDetector(predictor.detector)
    monkeypatch.setattr(predictor, "detector", spy)
    ctx = FakeContext()
    run(predictor, ctx, input_image=ASTRONAUT)
    assert spy.calls == []
    assert not any(line.startswith("Extracted") for line in ctx.lines)


def test_the_depth_detector_extracts_an_image_dependent_map_from_a_photo(depth, monkeypatch) -> None:
    spy = SpyDetector(depth.detector)
    monkeypatch.setattr(depth, "detector", spy)
    ctx = FakeContext()
    *astronaut_images, astronaut_map = run(
        depth, ctx, control_image=None, input_image=ASTRONAUT, return_control_map=True
    )
    *coffee_images, coffee_map = run(depth, control_image=None, input_image=COFFEE, return_control_map=True)
    assert spy.calls == [(512, 512), (600, 400)]
    assert any(line.startswith("Extracted the depth map in") for line in ctx.lines)
    assert astronaut_map.image.size == (64, 64) and np.asarray(astronaut_map.image).std() > 10
    assert not same([astronaut_map.image], [coffee_map.image])
    assert visibly_different(astronaut_images, coffee_images)


def test_the_openpose_detector_runs_on_a_photo(openpose, monkeypatch) -> None:
    spy = SpyDetector(openpose.detector)
    monkeypatch.setattr(openpose, "detector", spy)
    ctx = FakeContext()
    [image, pose] = run(openpose, ctx, control_image=None, input_image=ASTRONAUT, width=96, return_control_map=True)
    assert spy.calls == [(512, 512)]
    assert any(line.startswith("Extracted the openpose map in") for line in ctx.lines)
    assert image.size == pose.image.size == (96, 64)
    # Random weights find no person: the tiny profile's pose map is black
    # (see models/sdxl_family/fake_weights/annotators.py).
    assert np.asarray(pose.image).max() == 0


@pytest.mark.parametrize(("size", "expected"), [((64, 64), 256), ((1024, 768), 512), ((384, 1024), 384)])
def test_detectors_work_at_the_output_short_side_within_bounds(size, expected) -> None:
    assert detect_resolution(*size) == expected


def test_every_scheduler_runs(depth) -> None:
    for scheduler in Scheduler:
        [image] = run(depth, scheduler=scheduler.value)
        assert type(depth.pipe.scheduler) is SCHEDULERS[scheduler]
        assert image.size == (64, 64)


def test_the_seed_is_logged_and_the_step_callback_runs_once_per_step(depth) -> None:
    ctx = FakeContext()
    run(depth, ctx, seed=1234, num_inference_steps=5, scheduler="K_EULER")
    assert "Using seed: 1234" in ctx.lines
    assert ctx.steps == 5


def test_a_canceling_step_callback_stops_the_denoising_loop(predictor) -> None:
    ctx = FakeContext(cancel_after=2)
    with pytest.raises(PredictionCanceled):
        run(predictor, ctx, num_inference_steps=10)
    assert ctx.steps == 2
