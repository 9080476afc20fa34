"""Scales as data: the row-scaled IP-Adapter processor and ControlNet against diffusers' own, on the CPU.

The module tests compare tensors with diffusers' processor and ControlNet at float scales; the
predictor tests compare the XL predictors' pixels with the same pipeline run the way diffusers scales
it (``set_ip_adapter_scale`` and ``controlnet_conditioning_scale``), which is what the predictors did
before their scales were tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0

from models.sdxl_family.fake_weights.builder import make_conditioning_observable
from models.sdxl_family.fake_weights.layout_configs import tiny_configs
from models.sdxl_family.ip_adapter_scales import LayerRole, ip_adapter_block_scales, layer_role
from models.sdxl_family.row_scales import RowScaledControlNetModel, RowScaledIPAdapterAttnProcessor
from models.sdxl_family.schema import IPAdapterMode
from tests.support.xl_inputs import FACE, PRODUCT, SETTING, WHITE, half_mask
from tests.support.xl_runs import count_controlnet_forwards, diffusers_pixels, kiln_pixels

HIDDEN, CROSS, HEADS, TOKENS, QUERIES = 32, 24, 2, 4, 16

# --- The processor against diffusers' --------------------------------------------------------------


@pytest.fixture(scope="module")
def attention() -> tuple[Attention, IPAdapterAttnProcessor2_0, RowScaledIPAdapterAttnProcessor]:
    torch.manual_seed(0)
    attn = Attention(HIDDEN, cross_attention_dim=CROSS, heads=HEADS, dim_head=HIDDEN // HEADS)
    stock = IPAdapterAttnProcessor2_0(HIDDEN, CROSS, num_tokens=(TOKENS,))
    return attn, stock, RowScaledIPAdapterAttnProcessor.replacing(stock, LayerRole.OTHER)


def attention_inputs(rows: int, images: int = 1, seed: int = 1) -> tuple[torch.Tensor, tuple]:
    """Hidden states and the UNet's ``(text states, [image-prompt states])`` for ``rows`` rows."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, QUERIES, HIDDEN, generator=generator)
    text = torch.randn(rows, 7, CROSS, generator=generator)
    image = torch.randn(rows, images, TOKENS, CROSS, generator=generator)
    return hidden, (text, [image])


def stock_at(attention, scale: float | list[float], hidden, states, **kwargs: Any) -> torch.Tensor:
    attn, stock, _ = attention
    stock.scale = [scale]
    return stock(attn, hidden, states, **kwargs)


def row_scaled(attention, scales: list[list[float]], hidden, states, **kwargs: Any) -> torch.Tensor:
    attn, _, processor = attention
    processor.row_scales = [torch.tensor(scales)]
    try:
        return processor(attn, hidden, states, **kwargs)
    finally:
        processor.row_scales = None


@pytest.mark.parametrize("scale", [0.0, 0.3, 0.6, 1.0, 1.7])
def test_one_row_at_a_scale_is_diffusers_processor_at_that_scale(attention, scale: float) -> None:
    hidden, states = attention_inputs(1)
    expected = stock_at(attention, scale, hidden, states)
    assert torch.equal(row_scaled(attention, [[scale]], hidden, states), expected)
    # The scale is wired: another one gives other values.
    assert not torch.equal(row_scaled(attention, [[scale + 0.5]], hidden, states), expected)


def test_rows_with_different_scales_each_get_their_own(attention) -> None:
    scales = [0.0, 0.6, 1.2]
    hidden, states = attention_inputs(len(scales))
    batched = row_scaled(attention, [[s] for s in scales], hidden, states)
    for row, scale in enumerate(scales):
        # Exactly diffusers at that scale on the same batch...
        assert torch.equal(batched[row], stock_at(attention, scale, hidden, states)[row])
        # ...and what the row gives alone (a kernel for another batch size may round a last bit differently).
        alone = stock_at(
            attention, scale, hidden[row : row + 1], (states[0][row : row + 1], [states[1][0][row : row + 1]])
        )
        torch.testing.assert_close(batched[row : row + 1], alone, rtol=0, atol=1e-5)


def test_masked_image_prompts_get_their_own_scale_per_row(attention) -> None:
    hidden, states = attention_inputs(2, images=2)
    masks = [torch.stack([torch.ones(2, 8, 8), torch.zeros(2, 8, 8).index_fill(2, torch.arange(4), 1.0)], dim=1)]
    per_image = [[0.5, 1.5], [0.0, 2.0]]
    batched = row_scaled(attention, per_image, hidden, states, ip_adapter_masks=masks)
    for row, scales in enumerate(per_image):
        expected = stock_at(attention, scales, hidden, states, ip_adapter_masks=masks)
        assert torch.equal(batched[row], expected[row])
    assert not torch.equal(batched[0], stock_at(attention, [0.5, 0.5], hidden, states, ip_adapter_masks=masks)[0])


def test_unset_row_scales_is_diffusers_processor(attention) -> None:
    attn, _, processor = attention
    hidden, states = attention_inputs(2)
    processor.scale = [0.4]
    assert torch.equal(processor(attn, hidden, states), stock_at(attention, 0.4, hidden, states))


def test_unmasked_image_prompts_take_one_scale_column(attention) -> None:
    hidden, states = attention_inputs(1, images=2)
    with pytest.raises(ValueError, match="one scale column"):
        row_scaled(attention, [[0.5, 1.0]], hidden, states)


def test_each_layer_role_is_where_diffusers_block_scales_put_the_image_prompt(depth) -> None:
    """The roles agree with diffusers' own reading of InstantStyle's per-block scales."""
    config = depth.pipe.unet.config
    cross = {name: p for name, p in depth.pipe.unet.attn_processors.items() if "attn2" in name}
    assert all(isinstance(p, RowScaledIPAdapterAttnProcessor) for p in cross.values())
    for role, mode in ((LayerRole.STYLE, IPAdapterMode.STYLE), (LayerRole.COMPOSITION, IPAdapterMode.COMPOSITION)):
        depth.pipe.set_ip_adapter_scale(ip_adapter_block_scales(config, mode, 1.0))
        listening = {name for name, p in cross.items() if p.scale[0]}
        assert listening and listening == {name for name in cross if layer_role(config, name) is role}
        assert {name for name, p in cross.items() if p.role is role} == listening


# --- The ControlNet against diffusers' -------------------------------------------------------------


@pytest.fixture(scope="module")
def controlnet() -> RowScaledControlNetModel:
    torch.manual_seed(0)
    net = RowScaledControlNetModel.from_config(tiny_configs().controlnets["depth"])
    make_conditioning_observable(net)
    return net.eval()


def controlnet_inputs(net: ControlNetModel, rows: int) -> dict[str, Any]:
    config = net.config
    generator = torch.Generator().manual_seed(3)
    time_ids = 6 * config.addition_time_embed_dim
    return {
        "sample": torch.randn(rows, config.in_channels, 8, 8, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(rows, 7, config.cross_attention_dim, generator=generator),
        "controlnet_cond": torch.rand(rows, 3, 64, 64, generator=generator),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(
                rows, config.projection_class_embeddings_input_dim - time_ids, generator=generator
            ),
            "time_ids": torch.rand(rows, 6, generator=generator),
        },
        "return_dict": False,
    }


@torch.no_grad()
def test_controlnet_rows_are_scaled_like_diffusers_float_scale(controlnet) -> None:
    scales = [0.0, 0.8, 1.7]
    call = controlnet_inputs(controlnet, len(scales))
    controlnet.row_scales = torch.tensor(scales)
    try:
        down, mid = controlnet(**call, conditioning_scale=1.0)
    finally:
        controlnet.row_scales = None
    for row, scale in enumerate(scales):
        stock_down, stock_mid = controlnet(**call, conditioning_scale=scale)
        assert torch.equal(mid[row], stock_mid[row])
        assert len(down) == len(stock_down) and all(
            torch.equal(a[row], b[row]) for a, b in zip(down, stock_down, strict=True)
        )
    assert mid[2].abs().max() > mid[1].abs().max() > 0


@torch.no_grad()
def test_controlnet_turned_off_for_a_step_does_not_run(controlnet, monkeypatch) -> None:
    calls = count_controlnet_forwards(monkeypatch)
    controlnet.row_scales = torch.tensor([0.8, 0.8])
    try:
        assert controlnet(**controlnet_inputs(controlnet, 2), conditioning_scale=0.0) == (None, None)
    finally:
        controlnet.row_scales = None
    assert calls == []


# --- The predictors against the pipeline scaled the diffusers way ----------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"ip_adapter_scale": 0.0},
        {"ip_adapter_scale": 0.6},
        {"ip_adapter_scale": 1.0, "controlnet_scale": 1.3},
        {"controlnet_scale": 0.0},
        {"ip_adapter_mode": "style", "ip_adapter_scale": 0.8},
        {"ip_adapter_mode": "composition", "ip_adapter_scale": 0.8},
        {"ip_adapter_mode": "style_and_composition", "num_outputs": 2},
        {"control_guidance_start": 0.5, "controlnet_scale": 1.5},
        {"ip_images": [FACE, PRODUCT], "ip_adapter_scales": [0.6, 1.2], "ip_masks": [WHITE, half_mask("left", 64)]},
        {"ip_images": [SETTING, FACE], "ip_adapter_scales": [0.0, 2.0], "ip_adapter_mode": "style"},
    ],
    ids=lambda fields: (
        "-".join(f"{key}={value}" for key, value in fields.items() if not isinstance(value, list)) or "several"
    ),
)
def test_the_predictor_gives_the_pixels_of_diffusers_float_scales(depth, fields: dict) -> None:
    assert all(
        np.array_equal(a, b)
        for a, b in zip(kiln_pixels(depth, **fields), diffusers_pixels(depth, **fields), strict=True)
    )


def test_outside_the_guidance_window_the_controlnet_is_not_run(depth, monkeypatch) -> None:
    window = {"control_guidance_start": 0.25, "control_guidance_end": 0.75, "num_inference_steps": 4}
    expected = diffusers_pixels(depth, **window)
    calls = count_controlnet_forwards(monkeypatch)
    pixels = kiln_pixels(depth, **window)
    # Steps 1 and 2 of 0-3 are in the window; each runs the ControlNet once over both guidance halves.
    assert calls == [2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(pixels, expected, strict=True))
