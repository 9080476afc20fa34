"""The fast mode on the CPU (tiny profile): each part does less work, quality calls are untouched.

Random tiny weights give noise images, so the tests check work done (ControlNet rows, deep UNet block
calls), determinism, and that quality pixels are those of the plain pipeline call.
"""

from __future__ import annotations

import copy
import functools
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

from models.kit.fast_mode import (
    FastComponent,
    FastMode,
    deep_blocks,
    fast_mode_applied,
    float8_supported,
    parse_components,
    resolve_speed,
    reuse_installed,
)
from models.registry import MODELS
from models.sd2_depth2img.predictor import Depth2ImgPredictor
from models.sd2_depth2img.schema import Depth2ImgInput
from models.sdxl_family.predictor import IPAdapterXLPredictor
from shared.inputs.schema import Speed
from shared.scheduling import queues
from shared.settings import Settings
from tests.support.fakes import FakeContext
from tests.support.predictions import depth2img_input
from tests.support.xl_inputs import inputs
from tests.support.xl_runs import count_controlnet_forwards, diffusers_pixels, kiln_pixels
from worker.predictor_pool import PredictorPool

# --- Settings and gating ----------------------------------------------------------------------------


def test_components_parse_from_the_setting_and_an_unknown_one_is_named() -> None:
    assert parse_components(" feature_reuse, float8 ") == {FastComponent.FEATURE_REUSE, FastComponent.FLOAT8}
    assert parse_components("") == frozenset()
    with pytest.raises(ValueError, match="deepcache"):
        parse_components("feature_reuse,deepcache")


def test_a_prediction_without_speed_runs_at_the_workers_default(make_settings: Callable[..., Settings]) -> None:
    assert resolve_speed(None, make_settings()) is Speed.QUALITY
    assert resolve_speed(None, make_settings(speed_default="fast")) is Speed.FAST
    assert resolve_speed(Speed.QUALITY, make_settings(speed_default="fast")) is Speed.QUALITY


@contextmanager
def torchao_importable(importable: bool) -> Iterator[None]:
    saved = sys.modules.get("torchao")
    sys.modules["torchao"] = types.ModuleType("torchao") if importable else None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["torchao"]
        else:
            sys.modules["torchao"] = saved


@pytest.mark.parametrize(
    ("device", "capability", "torchao", "expected", "reason"),
    [
        ("cpu", None, True, False, "CUDA"),
        ("cuda", (8, 0), True, False, "8.9"),
        ("cuda", (8, 9), False, False, "torchao"),
        ("cuda", (8, 9), True, True, "available"),
        ("cuda", (9, 0), True, True, "available"),
    ],
)
def test_float8_runs_only_on_cuda_8_9_or_more_with_torchao(device, capability, torchao, expected, reason) -> None:
    with torchao_importable(torchao):
        supported, why = float8_supported(torch.device(device), capability)
    assert supported is expected and reason in why


def test_on_the_cpu_float8_is_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    fast = FastMode(frozenset({FastComponent.FLOAT8}), 3)
    with caplog.at_level("INFO", logger="models.kit.fast_mode"):
        assert fast.prepare_float8(object(), torch.device("cpu"), None) == []
    assert fast.float8_modules == {} and "float8 skipped" in caplog.text


def test_with_a_supported_gpu_float8_copies_the_unet_and_controlnet_once(monkeypatch) -> None:
    quantized: list[torch.nn.Module] = []

    def fake_quantized(model: torch.nn.Module) -> torch.nn.Module:
        quantized.append(model)
        return torch.nn.Identity()

    monkeypatch.setattr("models.kit.fast_mode.float8_quantized", fake_quantized)
    pipe = types.SimpleNamespace(unet=torch.nn.Linear(2, 2), controlnet=torch.nn.Linear(2, 2))
    with torchao_importable(True):
        applied = FastMode(frozenset({FastComponent.FLOAT8}), 3).prepare_float8(pipe, torch.device("cuda"), (9, 0))
        # A second predictor over the same UNet (the XL models share it) reuses its copy.
        again = FastMode(frozenset({FastComponent.FLOAT8}), 3)
        again.prepare_float8(pipe, torch.device("cuda"), (9, 0))
    assert applied == ["unet:float8", "controlnet:float8"]
    assert quantized == [pipe.unet, pipe.controlnet]
    assert again.float8_modules["unet"] is not pipe.unet
    # Swapped in for a fast call only, and not when the call applies a LoRA.
    fast = FastMode(frozenset({FastComponent.FLOAT8}), 3, dict(again.float8_modules))
    with fast_mode_applied(pipe, fast, guided=False):
        assert isinstance(pipe.unet, torch.nn.Identity)
    with fast_mode_applied(pipe, fast, guided=False, float8=False):
        assert isinstance(pipe.unet, torch.nn.Linear)
    assert isinstance(pipe.unet, torch.nn.Linear)


# --- The XL predictor -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool(make_settings: Callable[..., Settings]) -> PredictorPool:
    pool = PredictorPool(make_settings())
    pool.load_for_queues([queues.SDXL, queues.SD2_DEPTH])
    return pool


@pytest.fixture(scope="module")
def depth(pool: PredictorPool) -> IPAdapterXLPredictor:
    return pool.get(MODELS["kiln/ip-adapter-depth-xl"])


@contextmanager
def only(predictor: Any, *components: FastComponent, interval: int = 2) -> Iterator[None]:
    """The predictor's fast mode with just ``components``."""
    saved = predictor.fast
    predictor.fast = FastMode(frozenset(components), interval)
    try:
        yield
    finally:
        predictor.fast = saved


def count_calls(monkeypatch, module: torch.nn.Module) -> list[int]:
    """Every run of ``module``'s forward (also while a fast call shadows it), as its batch size."""
    calls: list[int] = []
    forward = type(module).forward

    def counted(self, hidden_states, *args, **kwargs):
        if self is module:
            calls.append(hidden_states.shape[0])
        return forward(self, hidden_states, *args, **kwargs)

    monkeypatch.setattr(type(module), "forward", counted)
    return calls


def test_quality_gives_the_pixels_of_the_plain_pipeline_call(depth) -> None:
    expected = diffusers_pixels(depth, controlnet_scale=0.9)
    for speed in (None, "quality"):
        pixels = kiln_pixels(depth, controlnet_scale=0.9, speed=speed)
        assert all(np.array_equal(a, b) for a, b in zip(pixels, expected, strict=True))


def test_fast_changes_the_pixels_and_gives_the_same_ones_again(depth) -> None:
    quality = kiln_pixels(depth, num_inference_steps=6)
    fast = kiln_pixels(depth, num_inference_steps=6, speed="fast")
    assert fast[0].shape == quality[0].shape
    assert not np.array_equal(fast[0], quality[0])
    assert np.array_equal(kiln_pixels(depth, num_inference_steps=6, speed="fast")[0], fast[0])


def test_the_workers_default_speed_applies_to_predictions_without_speed(depth, monkeypatch) -> None:
    fast = kiln_pixels(depth, speed="fast")
    monkeypatch.setattr(depth, "settings", depth.settings.model_copy(update={"speed_default": "fast"}))
    assert np.array_equal(kiln_pixels(depth)[0], fast[0])
    assert not np.array_equal(kiln_pixels(depth, speed="quality")[0], fast[0])


def test_controlnet_cond_only_runs_the_controlnet_on_half_the_rows(depth, monkeypatch) -> None:
    calls = count_controlnet_forwards(monkeypatch)
    quality = kiln_pixels(depth, num_outputs=2)
    assert calls == [4] * 4  # 2 outputs x [unconditional, conditional], 4 steps
    calls.clear()
    with only(depth, FastComponent.CONTROLNET_COND_ONLY):
        fast = kiln_pixels(depth, num_outputs=2, speed="fast")
    assert calls == [2] * 4
    assert not np.array_equal(fast[0], quality[0])
    # Without guidance there is no unconditional half: the ControlNet runs on every row, as in quality.
    calls.clear()
    with only(depth, FastComponent.CONTROLNET_COND_ONLY):
        unguided = kiln_pixels(depth, guidance_scale=1.0, speed="fast")
    assert calls == [1] * 4
    assert np.array_equal(unguided[0], kiln_pixels(depth, guidance_scale=1.0)[0])


def controlnet_arguments(predictor: IPAdapterXLPredictor, rows: int) -> dict[str, Any]:
    """Random ControlNet inputs for ``rows`` rows of a 64² generation."""
    net, generator = predictor.pipe.controlnet, torch.Generator().manual_seed(3)
    return {
        "sample": torch.randn(rows, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(rows, 77, net.config.cross_attention_dim, generator=generator),
        "controlnet_cond": torch.rand(rows, 3, 64, 64, generator=generator),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(rows, predictor.pipe.text_encoder_2.config.projection_dim, generator=generator),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * rows),
        },
    }


def second_half(arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        key: second_half(value) if isinstance(value, dict) else value[len(value) // 2 :]
        for key, value in arguments.items()
    }


@torch.no_grad()
def test_controlnet_cond_only_keeps_full_strength_residuals_unlike_guess_mode(depth) -> None:
    net, arguments = depth.pipe.controlnet, controlnet_arguments(depth, 4)
    net.row_scales = torch.ones(4)
    try:
        full_down, full_mid = net(timestep=torch.tensor(500), return_dict=False, **arguments)
        net.conditional_only = True
        half_down, half_mid = net(timestep=torch.tensor(500), return_dict=False, **arguments)
    finally:
        net.row_scales, net.conditional_only = None, False
    for full, half in zip([*full_down, full_mid], [*half_down, half_mid], strict=True):
        assert torch.equal(half[:2], torch.zeros_like(half[:2]))
        torch.testing.assert_close(half[2:], full[2:], rtol=1e-4, atol=1e-5)
    # diffusers' guess mode (the same half) ramps the shallowest residual down to a tenth.
    guess_down, _ = ControlNetModel.forward(
        net, timestep=torch.tensor(500), guess_mode=True, return_dict=False, **second_half(arguments)
    )
    torch.testing.assert_close(guess_down[0], 0.1 * half_down[0][2:], rtol=1e-3, atol=1e-5)


def test_controlnet_cond_only_takes_a_compiled_controlnet(depth, monkeypatch) -> None:
    with only(depth, FastComponent.CONTROLNET_COND_ONLY):
        expected = kiln_pixels(depth, speed="fast")
        # A compiled module has no truth value (its __len__ raises): the fast mode must not ask for one.
        monkeypatch.setattr(depth.pipe, "controlnet", torch.compile(depth.pipe.controlnet, backend="eager"))
        assert np.array_equal(kiln_pixels(depth, speed="fast")[0], expected[0])


def test_feature_reuse_runs_the_deep_blocks_once_per_interval(depth, monkeypatch) -> None:
    unet = depth.pipe.unet
    deep = count_calls(monkeypatch, unet.up_blocks[0])
    outer = count_calls(monkeypatch, unet.up_blocks[-1])
    kiln_pixels(depth, num_inference_steps=6)
    assert (len(deep), len(outer)) == (6, 6)
    deep.clear(), outer.clear()
    with only(depth, FastComponent.FEATURE_REUSE, interval=2):
        fast = kiln_pixels(depth, num_inference_steps=6, speed="fast")
    assert (len(deep), len(outer)) == (3, 6)
    deep.clear(), outer.clear()
    with only(depth, FastComponent.FEATURE_REUSE, interval=3):
        kiln_pixels(depth, num_inference_steps=6, speed="fast")
    assert (len(deep), len(outer)) == (2, 6)
    # The call keeps nothing after it, and the next quality call is untouched by it.
    state = reuse_installed(unet)
    assert not state.active and not any(state.kept)
    assert not np.array_equal(fast[0], kiln_pixels(depth, num_inference_steps=6)[0])


def test_feature_reuse_runs_a_compiled_unet_with_three_graphs_whatever_the_calls(depth, monkeypatch) -> None:
    """Quality, refresh and reuse steps each have a graph (per shape); a call adds none once they exist, and
    the compiled UNet reuses exactly as the eager one does."""
    unet = depth.pipe.unet
    graphs: list[torch.fx.GraphModule] = []

    def counting(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        graphs.append(graph)
        return graph.forward

    with only(depth, FastComponent.FEATURE_REUSE, interval=2):
        expected = kiln_pixels(depth, speed="fast", num_inference_steps=4)
        quality = kiln_pixels(depth, num_inference_steps=4)
        monkeypatch.setattr(depth.pipe, "unet", torch.compile(unet, backend=counting, fullgraph=True))
        assert np.array_equal(kiln_pixels(depth, speed="fast", num_inference_steps=4)[0], expected[0])
        assert len(graphs) == 2
        assert np.array_equal(kiln_pixels(depth, num_inference_steps=4)[0], quality[0])
        assert len(graphs) == 3
        for _ in range(2):
            assert np.array_equal(kiln_pixels(depth, speed="fast", num_inference_steps=4)[0], expected[0])
            assert np.array_equal(kiln_pixels(depth, num_inference_steps=4)[0], quality[0])
    assert len(graphs) == 3
    # The reuse graph runs only the outer blocks: it has fewer operations than the refresh graph.
    refresh, reuse, _ = (len(graph.graph.nodes) for graph in graphs)
    assert reuse < refresh / 2


def test_a_copy_of_a_unet_gets_its_own_reuse_not_its_originals(depth) -> None:
    """A float8 copy is a deep copy of a UNet that may have reuse installed: the copy's blocks and steps are
    its own."""
    unet = getattr(depth.pipe.unet, "_orig_mod", depth.pipe.unet)
    original = reuse_installed(unet)
    unet = copy.deepcopy(unet)
    state = reuse_installed(unet)
    assert state is not original
    assert all(vars(block)["forward"].kiln_reuse_of is block for block in deep_blocks(unet))
    counters = [hook for hook in unet._forward_pre_hooks.values() if isinstance(hook, functools.partial)]
    assert [hook.args for hook in counters] == [(state,)]


def test_fast_and_quality_predictions_never_share_a_micro_batch(depth) -> None:
    keys = {speed: depth.batch_key(inputs(speed=speed)) for speed in (None, "quality", "fast")}
    assert keys["fast"] != keys["quality"] and keys["fast"] != keys[None]
    fast_job = depth.prepare(inputs(speed="fast"), FakeContext())
    quality_job = depth.prepare(inputs(speed="quality"), FakeContext())
    assert fast_job.group_key != quality_job.group_key


# --- The SD2 predictor ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd2(pool: PredictorPool) -> Depth2ImgPredictor:
    return pool.get(MODELS["kiln/sd2-depth2img"])


def sd2_pixels(predictor: Depth2ImgPredictor, **fields: Any) -> np.ndarray:
    values = depth2img_input(width=64, height=64, num_inference_steps=6, prompt_strength=1.0, seed=5) | fields
    return np.asarray(predictor.predict(Depth2ImgInput(**values), FakeContext())[0])


def test_sd2_fast_reuses_deep_features_and_quality_is_untouched(sd2, monkeypatch) -> None:
    deep = count_calls(monkeypatch, sd2.pipe.unet.up_blocks[0])
    quality = sd2_pixels(sd2)
    assert len(deep) == 6
    deep.clear()
    with only(sd2, FastComponent.FEATURE_REUSE, interval=3):
        fast = sd2_pixels(sd2, speed="fast")
        assert np.array_equal(sd2_pixels(sd2, speed="fast"), fast)
    assert len(deep) == 2 * 2
    assert not np.array_equal(fast, quality)
    assert np.array_equal(sd2_pixels(sd2, speed="quality"), quality)
    assert sd2.batch_key(Depth2ImgInput(**depth2img_input(speed="fast"))) != sd2.batch_key(
        Depth2ImgInput(**depth2img_input())
    )
