"""Where the family's weights live in the tiny and random-full profiles' local folders.

One layout, which mirrors where the full profile's weights live, so that the predictors load every
profile with the same ``from_pretrained`` / ``load_ip_adapter`` calls::

    sdxl-base/               StableDiffusionXLPipeline   stabilityai/stable-diffusion-xl-base-1.0
    sdxl-vae-fp16-fix/       AutoencoderKL               madebyollin/sdxl-vae-fp16-fix
    controlnet-<kind>/       ControlNetModel             e.g. diffusers/controlnet-depth-sdxl-1.0 (one per kind)
    ip-adapter/sdxl_models/  ip-adapter_sdxl.safetensors and image_encoder/ (ViT-bigG), and
                             ip-adapter-plus{,-face}_sdxl_vit-h.safetensors   h94/IP-Adapter
    ip-adapter/models/       image_encoder/ (ViT-H, the Plus adapters' encoder)  h94/IP-Adapter

The base is saved without image encoder and feature extractor: ``load_ip_adapter`` registers them.
Light (no torch); the builders that write it are ``fake_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.registry import MODELS
from models.sdxl_family.schema import IPAdapterVariant
from models.sdxl_family.spec import AdapterModelSpec, ControlKind, ExtraAdapter, XLModelSpec
from shared.settings import Settings

BASE_DIR = "sdxl-base"
VAE_FP16_DIR = "sdxl-vae-fp16-fix"
IP_ADAPTER_DIR = "ip-adapter"
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
# load_ip_adapter's default image_encoder_folder, looked up under IP_ADAPTER_SUBFOLDER.
IMAGE_ENCODER_DIR = "image_encoder"
# The Plus adapters' image encoder (ViT-H/14) is h94/IP-Adapter's models/image_encoder.
PLUS_ENCODER_SUBFOLDER = "models"


@dataclass(frozen=True)
class AdapterFile:
    """One of the family's IP-Adapters in h94/IP-Adapter: its file, and the image encoder it reads."""

    weight_name: str
    # The encoder's folder under the IP-Adapter weights: "sdxl_models/image_encoder" or "models/image_encoder".
    encoder_subfolder: str
    # What the adapter reads of the encoder: its projected image embedding (standard) or the patch features
    # of its penultimate layer (Plus).
    reads_hidden_states: bool


# By ip_adapter_variant, in the order they are loaded into the UNet.
ADAPTER_FILES: dict[IPAdapterVariant, AdapterFile] = {
    IPAdapterVariant.STANDARD: AdapterFile(
        IP_ADAPTER_WEIGHT_NAME, f"{IP_ADAPTER_SUBFOLDER}/{IMAGE_ENCODER_DIR}", False
    ),
    IPAdapterVariant.PLUS: AdapterFile(
        "ip-adapter-plus_sdxl_vit-h.safetensors", f"{PLUS_ENCODER_SUBFOLDER}/{IMAGE_ENCODER_DIR}", True
    ),
    IPAdapterVariant.PLUS_FACE: AdapterFile(
        "ip-adapter-plus-face_sdxl_vit-h.safetensors", f"{PLUS_ENCODER_SUBFOLDER}/{IMAGE_ENCODER_DIR}", True
    ),
}


def control_kinds() -> tuple[ControlKind, ...]:
    """The ControlNet kind of every registered XL model, in registry order: the layout holds one ControlNet each."""
    return tuple(spec.control for spec in MODELS.values() if isinstance(spec, XLModelSpec))


def extra_adapters(settings: Settings) -> tuple[ExtraAdapter, ...]:
    """The IP-Adapters the served models add to the family's shared UNet, in registry order (InstantID's)."""
    return tuple(
        spec.extra_adapter for spec in MODELS.values() if isinstance(spec, AdapterModelSpec) and spec.served(settings)
    )
