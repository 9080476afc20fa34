"""Model registry and input schemas: version refs, validation limits, stable version ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from models.registry import MODELS, UnknownModelError, resolve_version
from models.sd2_depth2img.schema import Depth2ImgInput
from shared.input_schema import InputLimits, Scheduler
from shared.settings import Settings
from tests.support import data_uri, png_bytes

SETTINGS = Settings(_env_file=None)
SPEC = MODELS["kiln/sd2-depth2img"]


def test_version_refs_resolve_to_the_model():
    version = SPEC.version_id(SETTINGS)
    for ref in ("kiln/sd2-depth2img", version, f"kiln/sd2-depth2img:{version}"):
        assert resolve_version(ref, SETTINGS) is SPEC
    for bad in ("kiln/none", "0" * 64, f"kiln/sd2-depth2img:{'0' * 64}"):
        with pytest.raises(UnknownModelError):
            resolve_version(bad, SETTINGS)


def test_version_id_changes_with_the_weights():
    full = Settings(_env_file=None, weights_profile="full")
    other = Settings(_env_file=None, weights_profile="full", sd2_depth2img_weights="/models/sd2")
    ids = {SPEC.version_id(s) for s in (SETTINGS, full, other)}
    assert len(ids) == 3
    assert SPEC.version_id(SETTINGS) == SPEC.version_id(Settings(_env_file=None))


def test_defaults_follow_the_replicate_model():
    parsed = Depth2ImgInput.model_validate({"input_image": "https://example.com/a.png"})
    assert (parsed.prompt_strength, parsed.num_outputs, parsed.num_inference_steps, parsed.guidance_scale) == (0.8, 1, 50, 7.5)
    assert parsed.scheduler is Scheduler.DPM_SOLVER_MULTISTEP and parsed.seed is None


def test_data_uri_images_are_checked_only_with_limits():
    bad = "data:image/png;base64,aGVsbG8="
    Depth2ImgInput.model_validate({"input_image": bad})  # the worker re-validates without limits
    limits = InputLimits(max_bytes=10_000, max_pixels=100, max_side=1024)
    with pytest.raises(ValidationError, match="not a readable image"):
        Depth2ImgInput.model_validate({"input_image": bad}, context={"limits": limits})
    with pytest.raises(ValidationError, match="more than 100 pixels"):
        Depth2ImgInput.model_validate({"input_image": data_uri(png_bytes(20, 20))}, context={"limits": limits})


def test_schema_has_order_ranges_and_uri_images():
    schema = Depth2ImgInput.model_json_schema()
    props = schema["properties"]
    assert props["num_outputs"]["maximum"] == 8 and props["num_inference_steps"]["maximum"] == 500
    assert props["input_image"] == props["input_image"] | {"type": "string", "format": "uri"}
    assert [props[name]["x-order"] for name in props] == list(range(len(props)))
    assert schema["required"] == ["input_image"]


def test_steps_times_strength_must_leave_a_denoising_step():
    with pytest.raises(ValidationError, match="num_inference_steps \\* prompt_strength must be at least 1"):
        Depth2ImgInput.model_validate({"input_image": "https://e.com/a.png", "num_inference_steps": 1})
    Depth2ImgInput.model_validate({"input_image": "https://e.com/a.png", "num_inference_steps": 2})
