"""``ip_adapter_mode``: which UNet blocks listen to the image prompts (InstantStyle's per-block scales).

InstantStyle (arXiv 2404.02733) found that in SDXL one attention layer carries style and one carries
layout: the second attention of the first up block (``up_blocks.0.attentions.1``: style) and the last
attention of the deepest down block (``down_blocks.2.attentions.1``: composition). Giving the image
prompt only to those layers keeps its style without its content, or its layout without its look.
diffusers takes such per-block scales in ``set_ip_adapter_scale`` as a dict; the blocks are found from
the UNet's config, so the tiny profile's two-block UNet gets the same roles as SDXL's three-block one.

Kiln applies a mode as data rather than as processor settings: each cross-attention layer has a role
(the style layer, the composition layer, or another), and every batch row gets, per role, its
image-prompt scales where its mode lets that role listen and 0 elsewhere (``role_row_scales``). Rows
in different modes share one pipeline call, and a compiled UNet sees the same graph for every mode.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any

import torch

from models.sdxl_family.schema import IPAdapterMode

# A dict scale for diffusers' set_ip_adapter_scale: {"down": {"block_2": [0.0, 1.0]}, "up": {...}}.
BlockScales = dict[str, dict[str, list[float]]]


def _attentions_per_block(config: Mapping[str, Any], up: bool) -> list[int]:
    layers = config["layers_per_block"]
    count = len(config["down_block_types"])
    per_block = list(layers) if isinstance(layers, list | tuple) else [layers] * count
    # Up blocks mirror the down blocks and have one layer more each.
    return [n + 1 for n in reversed(per_block)] if up else per_block


def composition_blocks(config: Mapping[str, Any], scale: float) -> BlockScales:
    """The last attention of the deepest down block with cross-attention: where layout is decided."""
    down = [i for i, kind in enumerate(config["down_block_types"]) if "CrossAttn" in kind]
    index = down[-1]
    attentions = _attentions_per_block(config, up=False)[index]
    return {"down": {f"block_{index}": [0.0] * (attentions - 1) + [scale]}}


def style_blocks(config: Mapping[str, Any], scale: float) -> BlockScales:
    """The second attention (the only one, if alone) of the first up block with cross-attention: where style is."""
    up = [i for i, kind in enumerate(config["up_block_types"]) if "CrossAttn" in kind]
    index = up[0]
    attentions = _attentions_per_block(config, up=True)[index]
    chosen = min(1, attentions - 1)
    return {"up": {f"block_{index}": [scale if i == chosen else 0.0 for i in range(attentions)]}}


def ip_adapter_block_scales(config: Mapping[str, Any], mode: IPAdapterMode, scale: float) -> float | BlockScales:
    """What to pass ``set_ip_adapter_scale`` for ``mode``: ``scale`` everywhere (full), or at the style
    and/or composition layers only (every other layer 0)."""
    if mode is IPAdapterMode.FULL:
        return scale
    blocks: BlockScales = {}
    if mode in (IPAdapterMode.STYLE, IPAdapterMode.STYLE_AND_COMPOSITION):
        blocks |= style_blocks(config, scale)
    if mode in (IPAdapterMode.COMPOSITION, IPAdapterMode.STYLE_AND_COMPOSITION):
        blocks |= composition_blocks(config, scale)
    return blocks


class LayerRole(IntEnum):
    """What a cross-attention layer does in InstantStyle's reading of SDXL."""

    OTHER = 0
    STYLE = 1
    COMPOSITION = 2


# The roles that listen to the image prompts in each mode.
LISTENING: dict[IPAdapterMode, frozenset[LayerRole]] = {
    IPAdapterMode.FULL: frozenset(LayerRole),
    IPAdapterMode.STYLE: frozenset({LayerRole.STYLE}),
    IPAdapterMode.COMPOSITION: frozenset({LayerRole.COMPOSITION}),
    IPAdapterMode.STYLE_AND_COMPOSITION: frozenset({LayerRole.STYLE, LayerRole.COMPOSITION}),
}


def _listening_prefixes(blocks: BlockScales) -> list[str]:
    """The module-name prefixes of the attentions a dict scale gives a non-zero scale, as diffusers matches them."""
    return [
        f"{part}_blocks.{block.removeprefix('block_')}.attentions.{index}."
        for part, per_block in blocks.items()
        for block, scales in per_block.items()
        for index, scale in enumerate(scales)
        if scale
    ]


def layer_role(config: Mapping[str, Any], processor_name: str) -> LayerRole:
    """The role of the attention processor named ``processor_name`` (a key of ``unet.attn_processors``)."""
    for role, mode in ((LayerRole.STYLE, IPAdapterMode.STYLE), (LayerRole.COMPOSITION, IPAdapterMode.COMPOSITION)):
        blocks = ip_adapter_block_scales(config, mode, 1.0)
        assert isinstance(blocks, dict)  # every mode but full is a dict of blocks
        if any(processor_name.startswith(prefix) for prefix in _listening_prefixes(blocks)):
            return role
    return LayerRole.OTHER


def role_row_scales(modes: Sequence[IPAdapterMode], scales: torch.Tensor) -> dict[LayerRole, torch.Tensor]:
    """Per role, ``(rows, n)``: row ``r``'s image-prompt scales (``scales[r]``) where its mode ``modes[r]``
    lets that role listen, 0 where it does not."""
    return {
        role: scales
        * torch.tensor([float(role in LISTENING[mode]) for mode in modes], dtype=scales.dtype, device=scales.device)[
            :, None
        ]
        for role in LayerRole
    }
