"""Where the family's weights live in the tiny and random-full profiles' local folders.

One layout, which mirrors where the full profile's weights live, so that the predictors load every
profile with the same ``from_pretrained`` / ``load_ip_adapter`` calls::

    sdxl-base/               StableDiffusionXLPipeline   stabilityai/stable-diffusion-xl-base-1.0
    sdxl-vae-fp16-fix/       AutoencoderKL               madebyollin/sdxl-vae-fp16-fix
    controlnet-<kind>/       ControlNetModel             e.g. diffusers/controlnet-depth-sdxl-1.0 (one per kind)
    ip-adapter/sdxl_models/  ip-adapter_sdxl.safetensors and image_encoder/   h94/IP-Adapter

The base is saved without image encoder and feature extractor: ``load_ip_adapter`` registers them.
Light (no torch); the builders that write it are ``fake_weights``.
"""

from __future__ import annotations

from models.registry import MODELS
from models.sdxl_family.spec import ControlKind, XLModelSpec

BASE_DIR = "sdxl-base"
VAE_FP16_DIR = "sdxl-vae-fp16-fix"
IP_ADAPTER_DIR = "ip-adapter"
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
# load_ip_adapter's default image_encoder_folder, looked up under IP_ADAPTER_SUBFOLDER.
IMAGE_ENCODER_DIR = "image_encoder"


def control_kinds() -> tuple[ControlKind, ...]:
    """The ControlNet kind of every registered XL model, in registry order: the layout holds one ControlNet each."""
    return tuple(spec.control for spec in MODELS.values() if isinstance(spec, XLModelSpec))
