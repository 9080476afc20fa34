"""The configs of every model in the family's layout: the tiny ones (small) and the published ones (full size).

The tiny layout has the same classes and shapes that matter as the full models (see ``builder``): two
CLIP text encoders whose hidden sizes add up to the UNet's cross-attention width, a text-time UNet, a
VAE and ControlNet conditioning embedding that both downscale by 8 like SDXL's, a CLIP vision encoder
for the IP-Adapter. The random-full layout uses the published configs in ``models/sdxl_family/configs/``
(sources in its README) and each kind's published ControlNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.kit.fake_weights.published import configs_digest, read_config
from models.sdxl_family.layout import control_kinds
from models.sdxl_family.spec import ControlKind

# The published configs of the family's full-size models: models/sdxl_family/configs/ (sources in its README).
CONFIGS_DIR = Path(__file__).parents[1] / "configs"

TEXT_HIDDEN_SIZE = 32
TIME_EMBED_DIM = 8
# Covers the tiny tokenizer's ids (about 600); bos 0, eos/pad 1 are its special tokens.
VOCAB_SIZE = 1000


@dataclass(frozen=True)
class XLConfigs:
    """The configs of every model in the layout; ``controlnets`` is keyed by control kind name."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    vae_fp16: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    scheduler: dict[str, Any]
    controlnets: dict[str, dict[str, Any]]
    image_encoder: dict[str, Any]
    # The Plus adapters' encoder (ViT-H/14 in the full profile).
    plus_image_encoder: dict[str, Any]


def load_config(name: str) -> dict[str, Any]:
    """A published config of the family from ``CONFIGS_DIR``, by file name without ``.json``."""
    return read_config(CONFIGS_DIR / f"{name}.json")


def layout_digest(kinds: Sequence[ControlKind]) -> str:
    """A digest of the published configs the layout of ``kinds`` is built from: part of its fingerprint."""
    return configs_digest([*CONFIGS_DIR.glob("*.json"), *(kind.published_config for kind in kinds)])


_UNET_BLOCKS: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "attention_head_dim": [2, 4],
    "transformer_layers_per_block": [1, 1],
    "norm_num_groups": 8,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    # SDXL's add_time_ids: 6 size/crop numbers, each embedded, plus text_encoder_2's pooled projection.
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TEXT_HIDDEN_SIZE,
    "cross_attention_dim": 2 * TEXT_HIDDEN_SIZE,
}

_VAE: dict[str, Any] = {
    # Four blocks, like SDXL's VAE, so latents are 1/8 of the image side.
    "block_out_channels": [8, 8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "latent_channels": 4,
    "sample_size": 128,
    "scaling_factor": 0.13025,
}


_TINY_IMAGE_ENCODER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 32,
    "hidden_act": "gelu",
}


def _text_encoder(**extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN_SIZE,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
        **extra,
    }


def tiny_controlnet(kind: ControlKind) -> dict[str, Any]:
    """The kind's tiny ControlNet: the tiny UNet's blocks, the published ControlNet's conditioning channels."""
    # Three stride-2 convolutions: the control image is downscaled by 8, like the VAE's latents.
    return {
        **_UNET_BLOCKS,
        "conditioning_embedding_out_channels": [8, 8, 16, 16],
        "conditioning_channels": read_config(kind.published_config)["conditioning_channels"],
    }


def tiny_configs(kinds: Sequence[ControlKind] | None = None) -> XLConfigs:
    """The small configs of every model in the tiny SDXL layout, with a ControlNet per kind (default: all)."""
    kinds = control_kinds() if kinds is None else kinds
    return XLConfigs(
        unet={
            **_UNET_BLOCKS,
            "sample_size": 16,
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        },
        vae={**_VAE, "force_upcast": True},
        vae_fp16={**_VAE, "force_upcast": False},
        text_encoder=_text_encoder(),
        text_encoder_2=_text_encoder(projection_dim=TEXT_HIDDEN_SIZE),
        scheduler=load_config("sdxl_base_scheduler"),
        controlnets={kind.name: tiny_controlnet(kind) for kind in kinds},
        image_encoder=_TINY_IMAGE_ENCODER,
        # Wider than the standard encoder's, so that the Plus adapters' shapes are their own.
        plus_image_encoder=_TINY_IMAGE_ENCODER | {"hidden_size": 48, "intermediate_size": 96},
    )


def full_configs(kinds: Sequence[ControlKind] | None = None) -> XLConfigs:
    """The published configs of the full-size models the full profile downloads, a ControlNet per kind
    (default: all)."""
    kinds = control_kinds() if kinds is None else kinds
    return XLConfigs(
        unet=load_config("sdxl_base_unet"),
        vae=load_config("sdxl_base_vae"),
        vae_fp16=load_config("sdxl_vae_fp16_fix"),
        text_encoder=load_config("sdxl_base_text_encoder"),
        text_encoder_2=load_config("sdxl_base_text_encoder_2"),
        scheduler=load_config("sdxl_base_scheduler"),
        controlnets={kind.name: read_config(kind.published_config) for kind in kinds},
        image_encoder=load_config("ip_adapter_sdxl_image_encoder"),
        plus_image_encoder=load_config("ip_adapter_plus_image_encoder"),
    )
