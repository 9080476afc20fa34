"""Model registry and input schemas: version refs, validation limits, stable version ids."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from models.registry import MODELS, UnknownModelError, resolve_version
from models.sd2_depth2img.schema import Depth2ImgInput
from shared.inputs.schema import InputLimits, Scheduler
from shared.settings import Settings
from tests.support import REPO_ROOT, data_uri, png_bytes

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


# Version ids as clients have stored them: a model's id changes only when its input schema or its weights do.
# Last moved by ip_adapter_variant, ip_embeddings and return_embeddings on the XL models (the new
# kiln/instantid-xl got its first); sd2-depth2img's is unchanged.
PUBLISHED_VERSIONS = {
    ("tiny", "kiln/sd2-depth2img"): "863296d577f68bae7b2c3636c3a6835072fc59e0ba571a3f648cd32b65fa8011",
    ("tiny", "kiln/ip-adapter-depth-xl"): "7988562de90d6cbc954b3ca1892a153365fb5537d7a954b1d7edcba5d7775460",
    ("tiny", "kiln/ip-adapter-openpose-xl"): "c3de4045ec3ae005e35d4d5e9dd26ee0c7bcdf63b902021242a48299ba066e6f",
    ("tiny", "kiln/instantid-xl"): "8a7a77191fd023cb7117572fa84cfbac7858dc0a50a81c8397a5027122bc9f16",
    ("full", "kiln/sd2-depth2img"): "75e8ab2ac45d3b3a7b15f50fa91d5b888dd9295cbcc25659a61a52f55776e07f",
    ("full", "kiln/ip-adapter-depth-xl"): "fbdb2efd50fe98b972efd6038a953727a41a354b2706e437a082279b3b343ee2",
    ("full", "kiln/ip-adapter-openpose-xl"): "2836589b6d32366578132ebdeb080aa685d8a1eb8dda09c754948c2b1ea3c599",
    ("full", "kiln/instantid-xl"): "c7727fbc4250e0eaf5e91ad3f0c91db03968ff0d15c73cfaceb50bfbaf125062",
}


def test_version_ids_stay_what_clients_stored():
    ids = {
        (profile, ref): spec.version_id(Settings(_env_file=None, weights_profile=profile))
        for profile in ("tiny", "full")
        for ref, spec in MODELS.items()
    }
    assert ids == PUBLISHED_VERSIONS, "an input schema or a weights reference changed: every client's version id moves"


def test_the_registry_and_every_model_schema_import_without_torch():
    code = """
import importlib, importlib.util, pkgutil, sys
import models
from models.registry import MODELS
for folder in pkgutil.iter_modules(models.__path__, "models."):
    if folder.ispkg:
        importlib.import_module(folder.name)
        if importlib.util.find_spec(folder.name + ".schema"):
            importlib.import_module(folder.name + ".schema")
for spec in MODELS.values():
    spec.input_model.model_json_schema()
heavy = {"torch", "diffusers", "transformers", "controlnet_aux"}
print(",".join(sorted({m.split(".")[0] for m in sys.modules} & heavy)))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"imported: {result.stdout}"


def test_defaults_follow_the_replicate_model():
    parsed = Depth2ImgInput.model_validate({"input_image": "https://example.com/a.png"})
    assert (parsed.prompt_strength, parsed.num_outputs, parsed.num_inference_steps, parsed.guidance_scale) == (
        0.8,
        1,
        50,
        7.5,
    )
    assert parsed.scheduler is Scheduler.DPM_SOLVER_MULTISTEP and parsed.seed is None


def test_data_uri_images_are_checked_only_with_limits():
    bad = "data:image/png;base64,aGVsbG8="
    # Without limits in the context only the scheme is checked (the API and the runner both pass limits).
    Depth2ImgInput.model_validate({"input_image": bad})
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
