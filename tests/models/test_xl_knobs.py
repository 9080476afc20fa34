"""The XL models' newer knobs on the tiny profile: several weighted and masked image prompts, InstantStyle
modes, the ControlNet guidance window, and LoRA per request. Each test shows a knob moving the pixels
the way it should; the batch tests show every new input giving the same pixels alone or batched."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from models.sdxl_family.fake_weights.layout_configs import load_config
from models.sdxl_family.fake_weights.tiny_lora import main as tiny_lora_main
from models.sdxl_family.fake_weights.tiny_lora import tiny_lora_state_dict
from models.sdxl_family.ip_adapter_scales import ip_adapter_block_scales
from models.sdxl_family.lora import ADAPTER_NAME, LoraCache, LoraError, LoraWeights
from models.sdxl_family.predictor import IPAdapterXLPredictor
from models.sdxl_family.schema import IPAdapterMode
from tests.support.fakes import FakeContext
from tests.support.xl_inputs import BLACK, FACE, PRODUCT, SETTING, WHITE, half_mask, inputs
from worker.context import FileInputError

LORA = "https://loras.example/tiny.safetensors"
OTHER_LORA = "https://loras.example/other.safetensors"
UPLOADED_LORA = "http://kiln.test/v1/files/" + "l" * 26
LORA_BYTES = save_safetensors(tiny_lora_state_dict(seed=0))
FILES = {LORA: LORA_BYTES, OTHER_LORA: save_safetensors(tiny_lora_state_dict(seed=1)), UPLOADED_LORA: LORA_BYTES}


def run(predictor: IPAdapterXLPredictor, ctx: FakeContext | None = None, **fields: Any) -> np.ndarray:
    [image] = predictor.predict(inputs(**fields), ctx or FakeContext(files=FILES))
    return np.asarray(image).astype(int)


def at_most_one_level_apart(a: np.ndarray, b: np.ndarray) -> bool:
    """What the issue asks of "the same pixels" across differently shaped computations."""
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 1


def visibly_different(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).mean()) > 0.5


# --- Several image prompts -------------------------------------------------------------------------


def test_a_weight_of_zero_gives_the_pixels_of_leaving_that_image_out(depth) -> None:
    without = run(depth, ip_images=[FACE, SETTING], ip_adapter_scales=[0.6, 0.9])
    with_zero = run(depth, ip_images=[FACE, PRODUCT, SETTING], ip_adapter_scales=[0.6, 0.0, 0.9])
    assert at_most_one_level_apart(with_zero, without)
    # The weight is wired: the same image at weight 1 is there.
    assert visibly_different(run(depth, ip_images=[FACE, PRODUCT, SETTING], ip_adapter_scales=[0.6, 1.0, 0.9]), without)


def test_one_image_in_ip_images_is_ip_image(depth) -> None:
    alone = run(depth, ip_image=FACE, ip_adapter_scale=0.8)
    assert at_most_one_level_apart(run(depth, ip_images=[FACE], ip_adapter_scales=[0.8]), alone)
    # ip_adapter_scale is each image's weight when ip_adapter_scales is left out.
    assert at_most_one_level_apart(run(depth, ip_images=[FACE], ip_adapter_scale=0.8), alone)


def test_each_image_and_each_weight_changes_the_pixels(depth) -> None:
    base = run(depth, ip_images=[FACE, PRODUCT], ip_adapter_scales=[0.6, 0.6])
    assert visibly_different(base, run(depth, ip_images=[FACE, SETTING], ip_adapter_scales=[0.6, 0.6]))
    assert visibly_different(base, run(depth, ip_images=[FACE, PRODUCT], ip_adapter_scales=[0.6, 1.8]))
    assert visibly_different(base, run(depth, ip_images=[FACE, PRODUCT], ip_adapter_scales=[0.1, 0.6]))


def test_a_mask_confines_an_image_to_its_region(depth) -> None:
    size = {"width": 128, "height": 128}
    without = run(depth, ip_images=[FACE], ip_adapter_scales=[0.6], **size)
    effect = {}
    for side in ("left", "right"):
        masked = run(
            depth, ip_images=[FACE, PRODUCT], ip_adapter_scales=[0.6, 2.0], ip_masks=[WHITE, half_mask(side)], **size
        )
        change = np.abs(masked - without).mean(axis=2)
        effect[side] = (change[:, :64].mean(), change[:, 64:].mean())
    # Inside its mask the image changes the output more than outside (attention and convolutions
    # still carry some of it across), on whichever side the mask is.
    (left_in, left_out), (right_out, right_in) = effect["left"], effect["right"]
    assert left_in > 1.5 * left_out and right_in > 1.5 * right_out, effect
    # A black mask leaves the image out entirely.
    black = run(depth, ip_images=[FACE, PRODUCT], ip_adapter_scales=[0.6, 2.0], ip_masks=[WHITE, BLACK], **size)
    assert at_most_one_level_apart(black, without)


# --- InstantStyle modes ----------------------------------------------------------------------------


def test_the_modes_are_instantstyles_blocks_of_the_sdxl_unet() -> None:
    config = load_config("sdxl_base_unet")
    # diffusers' documented InstantStyle scales for SDXL (IPAdapterMixin.set_ip_adapter_scale).
    assert ip_adapter_block_scales(config, IPAdapterMode.STYLE, 1.0) == {"up": {"block_0": [0.0, 1.0, 0.0]}}
    assert ip_adapter_block_scales(config, IPAdapterMode.COMPOSITION, 1.0) == {"down": {"block_2": [0.0, 1.0]}}
    assert ip_adapter_block_scales(config, IPAdapterMode.STYLE_AND_COMPOSITION, 0.5) == {
        "up": {"block_0": [0.0, 0.5, 0.0]},
        "down": {"block_2": [0.0, 0.5]},
    }
    assert ip_adapter_block_scales(config, IPAdapterMode.FULL, 0.7) == 0.7


def scales_during_the_call(predictor: IPAdapterXLPredictor, **fields: Any) -> dict[str, float]:
    """The image-prompt scale each cross-attention block gives the (last) conditional row, seen mid-call."""
    seen: dict[str, float] = {}

    def record(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        for name, processor in predictor.pipe.unet.attn_processors.items():
            if "attn2" in name:
                seen[name.split(".transformer")[0]] = round(float(processor.row_scales[0][-1, 0]), 6)
        return kwargs

    predictor.generate([predictor.prepare(inputs(**fields), FakeContext(files=FILES))], record)
    return seen


@pytest.mark.parametrize(
    ("mode", "listening"),
    [
        ("style", {"up_blocks.0.attentions.1"}),
        ("composition", {"down_blocks.1.attentions.0"}),
        ("style_and_composition", {"up_blocks.0.attentions.1", "down_blocks.1.attentions.0"}),
    ],
)
def test_a_mode_gives_the_image_prompt_to_its_blocks_only_and_changes_the_pixels(depth, mode, listening) -> None:
    full = run(depth, ip_adapter_scale=0.8)
    styled = run(depth, ip_adapter_scale=0.8, ip_adapter_mode=mode)
    scales = scales_during_the_call(depth, ip_adapter_scale=0.8, ip_adapter_mode=mode)
    assert {block for block, scale in scales.items() if scale} == listening
    assert {scale for scale in scales.values() if scale} == {0.8}
    assert visibly_different(styled, full)
    # The scales live for the call only; the next prediction in full mode gets every block back.
    assert all(p.row_scales is None for p in depth.pipe.unet.attn_processors.values() if hasattr(p, "row_scales"))
    assert set(scales_during_the_call(depth, ip_adapter_scale=0.8).values()) == {0.8}
    assert np.array_equal(run(depth, ip_adapter_scale=0.8), full)


def test_modes_work_with_several_image_prompts(depth) -> None:
    several = {"ip_images": [FACE, PRODUCT], "ip_adapter_scales": [0.6, 1.2]}
    assert visibly_different(run(depth, **several, ip_adapter_mode="style"), run(depth, **several))


# --- ControlNet guidance window --------------------------------------------------------------------


def test_the_control_guidance_window(depth) -> None:
    default = run(depth)
    assert np.array_equal(run(depth, control_guidance_start=0.0, control_guidance_end=1.0), default)
    # A window that covers none of the 4 steps is the ControlNet switched off.
    assert np.array_equal(run(depth, control_guidance_start=0.9), run(depth, controlnet_scale=0.0))
    late, early = run(depth, control_guidance_start=0.5), run(depth, control_guidance_end=0.5)
    assert visibly_different(late, default) and visibly_different(early, default) and visibly_different(late, early)


# --- LoRA per request ------------------------------------------------------------------------------


def test_a_lora_changes_the_pixels_and_its_scale_is_wired(depth) -> None:
    without = run(depth)
    full, half = run(depth, lora_weights=LORA), run(depth, lora_weights=LORA, lora_scale=0.5)
    assert visibly_different(full, without) and visibly_different(half, without) and visibly_different(full, half)
    assert visibly_different(run(depth, lora_weights=OTHER_LORA), full)
    # lora_scale 0 is no LoRA at all.
    assert np.array_equal(run(depth, lora_weights=LORA, lora_scale=0.0), without)


def test_a_lora_never_leaks_into_later_predictions_of_either_model(depth, openpose) -> None:
    before = {name: run(predictor) for name, predictor in (("depth", depth), ("openpose", openpose))}
    run(depth, lora_weights=LORA)
    assert np.array_equal(run(depth), before["depth"])
    assert np.array_equal(run(openpose), before["openpose"])
    for part in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(depth.pipe, part)
        assert not any(hasattr(module, "lora_A") for module in model.modules()), part
        assert not getattr(model, "peft_config", None), part


def test_a_lora_is_unloaded_when_the_prediction_is_canceled_mid_loop(depth) -> None:
    from models.kit.contract import PredictionCanceled

    before = run(depth)
    with pytest.raises(PredictionCanceled):
        run(depth, FakeContext(cancel_after=2, files=FILES), lora_weights=LORA)
    assert np.array_equal(run(depth), before)


def test_loras_are_cached_by_content_and_an_upload_is_not_read_again(depth) -> None:
    depth.lora_cache = LoraCache(depth.settings.lora_cache_bytes)
    first = FakeContext(files=FILES, uploaded=frozenset({UPLOADED_LORA}))
    depth.prepare(inputs(lora_weights=UPLOADED_LORA), first)
    again = FakeContext(files=FILES, uploaded=frozenset({UPLOADED_LORA}))
    job = depth.prepare(inputs(lora_weights=UPLOADED_LORA), again)
    assert first.loaded == [UPLOADED_LORA] and again.loaded == []
    assert job.lora is not None and job.lora.sha256 == hashlib.sha256(LORA_BYTES).hexdigest()
    # The same bytes behind another URL are fetched (their digest is unknown until then), then found in the cache.
    by_url = FakeContext(files=FILES)
    assert depth.prepare(inputs(lora_weights=LORA), by_url).lora is job.lora
    assert by_url.loaded == [LORA] and "Using cached lora_weights" in by_url.lines


def test_the_lora_cache_keeps_the_most_recently_used_within_its_bytes() -> None:
    def lora(tag: str, kib: int) -> LoraWeights:
        return LoraWeights(tag, {"w": torch.zeros(kib * 256)})

    cache = LoraCache(max_bytes=3 * 1024)
    for tag in "abc":
        cache.put(lora(tag, 1))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put(lora("d", 1))
    assert [tag in cache for tag in "abcd"] == [True, False, True, True]
    cache.put(lora("huge", 4))
    assert "huge" not in cache and cache.nbytes == 3 * 1024


def sd15_like_lora() -> dict[str, torch.Tensor]:
    """The tiny LoRA with the cross-attention inputs of another base (SD 1.5 has 768, not SDXL's width)."""
    layers = tiny_lora_state_dict()
    return {
        key: torch.zeros(tensor.shape[0], tensor.shape[1] + 8) if "attn2.to_k.lora_A" in key else tensor
        for key, tensor in layers.items()
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pickle.dumps({"unet.x.lora_A.weight": [0.0]}), "not a safetensors file"),
        (b"PK\x03\x04 a zipped torch checkpoint", "not a safetensors file"),
        (save_safetensors({"model.diffusion_model.weight": torch.zeros(2, 2)}), "not a LoRA"),
        (save_safetensors(sd15_like_lora()), "the LoRA is for another base model"),
        (save_safetensors({"transformer.blocks.0.attn.lora_A.weight": torch.zeros(4, 8)}), "is this an SDXL LoRA"),
        (
            save_safetensors({"unet.down_blocks.9.attn.to_q.lora_A.weight": torch.zeros(4, 8)}),
            "names no layer of this model's unet",
        ),
    ],
    ids=["pickle", "zip", "checkpoint", "other-base-shapes", "other-architecture", "unknown-layer"],
)
def test_a_file_that_is_not_an_sdxl_lora_is_refused_before_touching_the_model(depth, data, message) -> None:
    url = "https://loras.example/bad.safetensors"
    with pytest.raises(LoraError, match=message):
        depth.prepare(inputs(lora_weights=url), FakeContext(files={url: data}))
    assert not any(hasattr(module, "lora_A") for module in depth.pipe.unet.modules())


def test_a_lora_over_the_byte_cap_or_missing_is_a_clear_failure(depth, monkeypatch) -> None:
    monkeypatch.setattr(depth, "settings", depth.settings.model_copy(update={"lora_max_bytes": 1024}))
    with pytest.raises(FileInputError, match="larger than 1024 bytes"):
        depth.prepare(inputs(lora_weights=LORA), FakeContext(files=FILES))
    with pytest.raises(FileInputError, match="404"):
        depth.prepare(inputs(lora_weights="https://loras.example/missing.safetensors"), FakeContext(files=FILES))


def test_tiny_lora_command_writes_a_lora_that_loads(depth, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tiny.safetensors"
    tiny_lora_main([str(out), "--seed", "3"])
    assert "wrote" in capsys.readouterr().out
    url = "https://loras.example/written.safetensors"
    job = depth.prepare(inputs(lora_weights=url), FakeContext(files={url: out.read_bytes()}))
    assert job.lora is not None and len(job.lora.state_dict) == len(tiny_lora_state_dict())
    assert ADAPTER_NAME not in (getattr(depth.pipe.unet, "peft_config", None) or {})


# --- Batching --------------------------------------------------------------------------------------

# Predictions that share a pipeline call: different prompts, seeds, outputs, image prompts, weights, masks,
# InstantStyle modes and ControlNet strengths.
BATCHABLE = [
    {"prompt": "a red house", "seed": 7, "ip_images": [FACE, PRODUCT], "ip_adapter_scales": [0.6, 1.2],
     "ip_adapter_mode": "style_and_composition"},
    {"prompt": "a blue dog", "seed": 8, "num_outputs": 2, "ip_images": [SETTING, FACE], "ip_masks": [WHITE, BLACK],
     "controlnet_scale": 1.4},
    {"prompt": "", "seed": 9, "ip_images": [PRODUCT, SETTING], "ip_adapter_scales": [0.0, 2.0],
     "ip_masks": [half_mask("left", 64), WHITE], "ip_adapter_mode": "style", "controlnet_scale": 0.3},
]  # fmt: skip
SHARED = {"control_guidance_end": 0.75, "lora_weights": LORA, "lora_scale": 0.7, "output_format": "webp"}
# One image prompt each, at different strengths and modes.
BATCHABLE_ONE = [
    {"prompt": "a red house", "seed": 7, "ip_image": FACE, "ip_adapter_scale": 0.0},
    {"prompt": "a red house", "seed": 7, "ip_image": FACE, "ip_adapter_scale": 0.9, "controlnet_scale": 1.6},
    {"prompt": "a blue dog", "seed": 8, "num_outputs": 2, "ip_image": PRODUCT, "ip_adapter_scale": 0.5,
     "ip_adapter_mode": "composition", "controlnet_scale": 0.0},
]  # fmt: skip


@pytest.mark.parametrize(("batch", "shared"), [(BATCHABLE, SHARED), (BATCHABLE_ONE, {})], ids=["several", "one"])
def test_new_inputs_give_the_same_pixels_alone_or_batched(depth, batch, shared) -> None:
    jobs = [depth.prepare(inputs(**shared | fields), FakeContext(files=FILES)) for fields in batch]
    assert len({job.group_key for job in jobs}) == 1
    assert len({depth.batch_key(job.inputs) for job in jobs}) == 1
    batched = depth.generate(jobs, FakeContext().step_callback())
    for fields, outputs in zip(batch, batched, strict=True):
        alone = depth.predict(inputs(**shared | fields), FakeContext(files=FILES))
        assert len(outputs) == len(alone) == fields.get("num_outputs", 1)
        for image, expected in zip(outputs, alone, strict=True):
            assert at_most_one_level_apart(np.asarray(image).astype(int), np.asarray(expected).astype(int))
    assert not np.array_equal(np.asarray(batched[0][0]), np.asarray(batched[2][0]))
    # Rows that differ only in their strengths differ in pixels too: each row got its own.
    assert not np.array_equal(np.asarray(batched[0][0]), np.asarray(batched[1][0]))
    # The batch's LoRA is gone afterwards.
    assert not any(hasattr(module, "lora_A") for module in depth.pipe.unet.modules())


@pytest.mark.parametrize(
    "change",
    [
        {"control_guidance_start": 0.25},
        {"control_guidance_end": 0.5},
        {"lora_weights": OTHER_LORA},
        {"lora_scale": 1.0},
        {"ip_images": [FACE, PRODUCT, SETTING], "ip_adapter_scales": [0.6, 1.2, 1.0]},
        {"ip_images": None, "ip_adapter_scales": None, "ip_image": FACE},
    ],
    ids=lambda change: next(iter(change)),
)
def test_what_changes_the_pipeline_call_is_in_the_batch_key(depth, change) -> None:
    base = inputs(**SHARED | BATCHABLE[0])
    assert depth.batch_key(base) != depth.batch_key(inputs(**SHARED | BATCHABLE[0] | change))


@pytest.mark.parametrize(
    "change",
    [
        {"ip_adapter_scales": [2.0, 0.0]},
        {"ip_masks": [BLACK, WHITE]},
        {"output_format": "jpg"},
        {"ip_adapter_mode": "composition"},
        {"ip_adapter_mode": "full"},
        {"controlnet_scale": 1.9},
        {"ip_adapter_scale": 0.1},
    ],
    ids=lambda change: next(iter(change)),
)
def test_per_row_inputs_stay_out_of_the_batch_key(depth, change) -> None:
    base = inputs(**SHARED | BATCHABLE[0])
    assert depth.batch_key(base) == depth.batch_key(inputs(**SHARED | BATCHABLE[0] | change))


@pytest.mark.parametrize(
    "change", [{"ip_adapter_scale": 0.1}, {"controlnet_scale": 0.0}, {"ip_adapter_mode": "style"}], ids=str
)
def test_one_image_prompt_at_another_strength_or_mode_shares_the_batch(depth, change) -> None:
    one = {"ip_image": FACE, "ip_adapter_scale": 0.6, "controlnet_scale": 0.8}
    assert depth.batch_key(inputs(**one)) == depth.batch_key(inputs(**one | change))
