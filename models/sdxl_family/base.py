"""The SDXL base every XL predictor of a process shares: one UNet holding every IP-Adapter, and the image encoders.

Loading an IP-Adapter replaces the UNet's attention processors, so all adapters are loaded at once, by
whichever XL predictor sets up first, in one order that every predictor of the process agrees on
(``adapter_names``): the family's variants (``ip_adapter_variant``: standard, plus, plus-face) and then
the extra adapters of the served models that declare one (InstantID's). A call selects its adapter
(``row_scales.adapter_selected``); the others stay loaded and unused.

One pipeline holds one image encoder, and the variants read two: standard reads ViT-bigG's projected
embedding, the Plus ones ViT-H's patch features. Both encoders are loaded here and image prompts are
encoded outside the pipeline (``ImagePromptEncoder``), which then takes the embeddings as they are.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from models.kit.devices import dtype_for, resolve_device
from models.kit.weights.loading import hub_cache_dir, load_model, load_pipeline
from models.sdxl_family.layout import ADAPTER_FILES, IP_ADAPTER_SUBFOLDER, extra_adapters
from models.sdxl_family.row_scales import install_row_scaled_processors
from models.sdxl_family.schema import IPAdapterVariant
from models.sdxl_family.weights import XLWeights
from shared.settings import Settings


@dataclass(frozen=True)
class ImagePromptEncoder:
    """A CLIP vision encoder and its preprocessing: image prompts to what an IP-Adapter reads."""

    model: CLIPVisionModelWithProjection
    processor: CLIPImageProcessor

    @torch.no_grad()
    def encode(self, image: Image.Image, hidden_states: bool) -> torch.Tensor:
        """``(2, 1, ...)``: [unconditional, image prompt], as diffusers' ``encode_image`` makes them: the
        projected embedding and zeros (standard), or the penultimate layer's patch features of the image and
        of a black image (Plus, ``hidden_states``)."""
        pixels = self.processor(image, return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.model.device, dtype=self.model.dtype)
        if hidden_states:
            positive = self.model(pixels, output_hidden_states=True).hidden_states[-2]
            negative = self.model(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        else:
            positive = self.model(pixels).image_embeds
            negative = torch.zeros_like(positive)
        return torch.stack([negative, positive])


@dataclass(frozen=True)
class SharedBase:
    """The shared SDXL: pipeline components, the adapters loaded into its UNet (in order), the encoders."""

    components: Mapping[str, Any]
    adapter_names: tuple[str, ...]
    # By ip_adapter_variant.
    encoders: Mapping[IPAdapterVariant, ImagePromptEncoder]

    def adapter_index(self, name: str) -> int:
        """The position of the adapter ``name`` (a variant's value or an extra adapter's name) in the UNet."""
        return self.adapter_names.index(name)


def read_adapter_file(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter safetensors file as diffusers' loader takes a state dict: ``image_proj`` and ``ip_adapter``."""
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(path, framework="pt", device="cpu") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            part, _, name = key.partition(".")
            if part in state:
                state[part][name] = f.get_tensor(key)
    return state


def _plus_encoder(settings: Settings, weights: XLWeights) -> ImagePromptEncoder:
    device = resolve_device(settings.device)
    subfolder = ADAPTER_FILES[IPAdapterVariant.PLUS].encoder_subfolder
    model = CLIPVisionModelWithProjection.from_pretrained(
        weights.ip_adapter,
        subfolder=subfolder,
        dtype=dtype_for(device, settings.cuda_dtype),
        cache_dir=hub_cache_dir(settings),
        device_map=str(device),
    )
    size = model.config.image_size
    return ImagePromptEncoder(model, CLIPImageProcessor(size=size, crop_size=size))


def _load_base(settings: Settings, weights: XLWeights) -> SharedBase:
    vae = {"vae": load_model(AutoencoderKL, weights.vae, settings)} if weights.vae else {}
    base = load_pipeline(StableDiffusionXLPipeline, weights.base, settings, **vae)
    extras = extra_adapters(settings)
    variants = list(ADAPTER_FILES)
    # The family's adapters from h94/IP-Adapter (the first also brings its image encoder, ViT-bigG), then
    # the extra adapters, read here from their safetensors files (never a pickle).
    base.load_ip_adapter(
        [weights.ip_adapter] * len(variants) + [read_adapter_file(extra.file(settings)) for extra in extras],
        subfolder=[IP_ADAPTER_SUBFOLDER] * len(variants) + [""] * len(extras),
        weight_name=[ADAPTER_FILES[variant].weight_name for variant in variants] + [""] * len(extras),
        cache_dir=hub_cache_dir(settings),
    )
    install_row_scaled_processors(base.unet)
    standard = ImagePromptEncoder(base.image_encoder, base.feature_extractor)
    plus = _plus_encoder(settings, weights)
    return SharedBase(
        components=base.components,
        adapter_names=tuple(variant.value for variant in variants) + tuple(extra.name for extra in extras),
        encoders={variant: plus if ADAPTER_FILES[variant].reads_hidden_states else standard for variant in variants},
    )


_bases: dict[tuple[str, ...], SharedBase] = {}
_bases_lock = threading.Lock()


def shared_base(settings: Settings, weights: XLWeights) -> SharedBase:
    """The SDXL base with every IP-Adapter loaded, loaded once per process, weights and adapter list.

    Every XL predictor of the process gets the same UNet, VAE, text encoders, tokenizers and image encoders.
    """
    key = (
        weights.base,
        str(weights.vae),
        weights.ip_adapter,
        *(extra.name for extra in extra_adapters(settings)),
        str(resolve_device(settings.device)),
        str(hub_cache_dir(settings)),
    )
    with _bases_lock:
        if key not in _bases:
            _bases[key] = _load_base(settings, weights)
        return _bases[key]
