"""The predictors with ``KILN_TORCH_COMPILE``: every input path gives the eager predictor's pixels.

The modules are compiled with dynamo's ``eager`` backend (tracing only: the very same kernels run), so any
difference is a path that breaks on a compiled module. A compiled worker meets what the eager tests never
do: a UNet and ControlNet that are ``OptimizedModule`` wrappers (no truth value, not a diffusers
``ModelMixin``, hooks outside the graph), a VAE that is a view, and ``fullgraph`` graphs that must not break.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from models.instantid_xl.schema import InstantIDXLInput
from models.kit.fast_mode import FastComponent, FastMode
from models.registry import find_model
from models.sd2_depth2img.schema import Depth2ImgInput
from models.sdxl_family.fake_weights.tiny_lora import tiny_lora_state_dict
from shared.settings import Settings
from tests.support.fakes import FakeContext
from tests.support.worker_inputs import FAST, INPUTS
from tests.support.xl_inputs import FACE, PRODUCT, WHITE, half_mask, inputs
from worker.predictor_pool import PredictorPool

LORA = "https://loras.example/tiny.safetensors"
FACE_FILE = "https://faces.example/face.safetensors"
FACE_EMBEDDING = torch.randn(512, generator=torch.Generator().manual_seed(0))
FILES = {
    LORA: save_safetensors(tiny_lora_state_dict(seed=0)),
    FACE_FILE: save_safetensors({"face_embedding": FACE_EMBEDDING / FACE_EMBEDDING.norm()}),
}
# Each knob whose path differs on a compiled module; the fast mode with its components a CPU runs.
XL_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "lora": {"lora_weights": LORA},
    "lora at half scale": {"lora_weights": LORA, "lora_scale": 0.5},
    "two outputs": {"num_outputs": 2},
    "masked image prompts": {
        "ip_images": [FACE, PRODUCT],
        "ip_adapter_scales": [0.6, 1.0],
        "ip_masks": [WHITE, half_mask("left", 64)],
    },
    "style mode": {"ip_adapter_mode": "style"},
    "guidance window": {"control_guidance_start": 0.25, "control_guidance_end": 0.75},
    "no guidance": {"guidance_scale": 1.0},
    "fast": {"speed": "fast"},
    "fast with a lora": {"speed": "fast", "lora_weights": LORA},
}
CPU_FAST = FastMode(frozenset({FastComponent.CONTROLNET_COND_ONLY, FastComponent.FEATURE_REUSE}), 2)


@pytest.fixture(scope="module")
def pools(make_settings: Callable[..., Settings]) -> tuple[PredictorPool, PredictorPool]:
    """(eager, compiled): the compiled pool's sizes are not snapped, so both generate at 64²."""
    compiled = make_settings(
        torch_compile=True, compile_backend="eager", snap_to_buckets=False, allow_noncommercial_models=True
    )
    return PredictorPool(make_settings(allow_noncommercial_models=True)), PredictorPool(compiled)


def xl_pixels(predictor: Any, **fields: Any) -> list[np.ndarray]:
    ctx = FakeContext(files=FILES)
    return [np.asarray(image).astype(int) for image in predictor.predict(inputs(**fields), ctx)]


@pytest.mark.parametrize("case", list(XL_CASES))
def test_a_compiled_xl_predictor_gives_the_eager_pixels(pools: tuple[PredictorPool, PredictorPool], case: str) -> None:
    eager, compiled = (pool.get(find_model("kiln/ip-adapter-depth-xl")) for pool in pools)
    assert isinstance(compiled.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    for predictor in (eager, compiled):
        predictor.fast = CPU_FAST
    expected = xl_pixels(eager, **XL_CASES[case])
    got = xl_pixels(compiled, **XL_CASES[case])
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(a, b), case
    # Whatever the call swapped (the UNet run eagerly for a LoRA) is compiled again.
    assert isinstance(compiled.pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert not any(hasattr(module, "lora_A") for module in compiled.pipe.unet.modules())


def test_a_compiled_xl_micro_batch_of_different_scales_gives_each_its_eager_pixels(
    pools: tuple[PredictorPool, PredictorPool],
) -> None:
    eager, compiled = (pool.get(find_model("kiln/ip-adapter-depth-xl")) for pool in pools)
    given = [inputs(ip_adapter_scale=0.3, controlnet_scale=0.5, seed=1), inputs(ip_adapter_scale=0.9, seed=2)]

    def batch(predictor: Any) -> list[np.ndarray]:
        jobs = [predictor.prepare(each, FakeContext()) for each in given]
        outputs = predictor.generate(jobs, FakeContext().step_callback())
        return [np.asarray(images[0]).astype(int) for images in outputs]

    for a, b in zip(batch(compiled), batch(eager), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("speed", ["quality", "fast"])
def test_a_compiled_sd2_predictor_gives_the_eager_pixels(
    pools: tuple[PredictorPool, PredictorPool], speed: str
) -> None:
    eager, compiled = (pool.get(find_model("kiln/sd2-depth2img")) for pool in pools)
    for predictor in (eager, compiled):
        predictor.fast = FastMode(frozenset({FastComponent.FEATURE_REUSE}), 2)
    given = Depth2ImgInput(**FAST | INPUTS[0] | {"speed": speed})
    expected, got = (np.asarray(p.predict(given, FakeContext())[0]).astype(int) for p in (eager, compiled))
    assert np.array_equal(got, expected)


INSTANTID_CASES: dict[str, dict[str, Any]] = {
    "plain": {},
    "lora": {"lora_weights": LORA},
    "weaker identity, whole image": {"identitynet_strength": 0.5, "enhance_face_region": False},
    "fast": {"speed": "fast"},
}


@pytest.mark.parametrize("case", list(INSTANTID_CASES))
def test_a_compiled_instantid_predictor_gives_the_eager_pixels(
    pools: tuple[PredictorPool, PredictorPool], case: str
) -> None:
    eager, compiled = (pool.get(find_model("kiln/instantid-xl")) for pool in pools)
    for predictor in (eager, compiled):
        predictor.fast = CPU_FAST
    fields = {"prompt": "a portrait", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 5}
    given = InstantIDXLInput(**fields | {"face_embedding": FACE_FILE} | INSTANTID_CASES[case])
    expected, got = (np.asarray(p.predict(given, FakeContext(files=FILES))[0]).astype(int) for p in (eager, compiled))
    assert np.array_equal(got, expected)
