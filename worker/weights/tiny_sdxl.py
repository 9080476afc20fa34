"""Tiny SDXL + ControlNet (depth, openpose) + IP-Adapter weights: the real classes, small configs.

Same layout and classes as the full models (see ``worker.weights.sdxl_builder``): two CLIP text
encoders whose hidden sizes add up to the UNet's cross-attention width, a text-time UNet, a VAE and
ControlNet conditioning embedding that both downscale by 8 like SDXL's, a CLIP vision encoder and
IP-Adapter weights. The ControlNets' zero convolutions get random weights so that the control image
and ``controlnet_conditioning_scale`` change the output. Its images are noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.weights.sdxl_builder import XLConfigs, build_xl_weights, configs_digest, load_config
from worker.weights.tiny import builder_fingerprint, ensure_built

SEED = 0
TEXT_HIDDEN_SIZE = 32
TIME_EMBED_DIM = 8
# Covers the tiny tokenizer's ids (about 600); bos 0, eos/pad 1 are its special tokens.
VOCAB_SIZE = 1000

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


def _controlnet() -> dict[str, Any]:
    # Three stride-2 convolutions: the control image is downscaled by 8, like the VAE's latents.
    return {**_UNET_BLOCKS, "conditioning_embedding_out_channels": [8, 8, 16, 16], "conditioning_channels": 3}


def tiny_configs() -> XLConfigs:
    """The small configs of every model in the tiny SDXL layout."""
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
        controlnets={"depth": _controlnet(), "openpose": _controlnet()},
        image_encoder={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
            "projection_dim": 32,
            "hidden_act": "gelu",
        },
    )


def build_tiny_sdxl(folder: Path) -> None:
    """Build the tiny SDXL layout with random weights under a fixed seed and save it into ``folder``."""
    build_xl_weights(folder, tiny_configs(), seed=SEED, observable_controlnets=True)


def ensure_tiny_sdxl(weights_dir: Path) -> Path:
    """The folder of the tiny SDXL layout under ``weights_dir``, built on first use."""
    return ensure_built(
        Path(weights_dir) / "tiny" / "sdxl",
        f"{builder_fingerprint(__name__, 'worker.weights.sdxl_builder')}-{configs_digest()}",
        build_tiny_sdxl,
    )
