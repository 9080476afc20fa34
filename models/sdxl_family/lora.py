"""LoRA weights per request for the XL models: fetch, check, cache, and apply for one pipeline call only.

- **Fetch** (``prepare``, possibly in the prefetch thread): an uploaded file from storage or an https
  URL through the SSRF guard, at most ``KILN_LORA_MAX_BYTES`` (``PredictContext.load_file``).
- **Check**: the bytes must be a safetensors file (parsed by ``safetensors``; a pickle is never
  loaded) of LoRA layers that fit this SDXL base: every layer names a module of the UNet or a text
  encoder (after diffusers' conversion of kohya / A1111 names) with the shapes the LoRA expects. The
  check reads the shared modules' shapes only: it never changes the pipeline another thread runs.
- **Cache**: checked LoRAs are kept per process, by the SHA-256 of their bytes, least recently used
  out first within ``KILN_LORA_CACHE_BYTES``. An uploaded file's digest is on its record, so a cached
  upload is not even read again. (Fetch, header check, parse and cache: ``models.kit.tensor_files``.)
- **Apply** (``generate``): ``lora_applied`` loads the LoRA into the UNet and text encoders under one
  adapter name (diffusers' PEFT integration), sets its scale, and unloads it when the call ends, however
  it ends: the next prediction runs on the untouched base, bit for bit. The LoRA is never fused: fusing
  and unfusing rounds the base weights, which would leak into later predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from models.kit.contract import PredictContext
from models.kit.tensor_files import (
    TensorFile,
    TensorFileCache,
    TensorFileError,
    load_tensor_file,
    process_tensor_file_cache,
)
from models.kit.tuning import uncompiled
from shared.inputs.lora import check_lora_header
from shared.settings import Settings

log = logging.getLogger(__name__)

# The one adapter name a request's LoRA is loaded under (and unloaded by).
ADAPTER_NAME = "kiln-request-lora"
# The LoRA-loadable parts of an SDXL pipeline (diffusers' StableDiffusionXLLoraLoaderMixin).
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# Key endings of a LoRA layer after diffusers' conversion: the down (A) and up (B) projections.
_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_linear_layer.down.weight")
_UP = (".lora_B.weight", ".lora.up.weight", ".lora_linear_layer.up.weight")
_OTHER = (".alpha", ".lora_A.bias", ".lora_B.bias", ".lora_magnitude_vector")


class LoraError(ValueError):
    """LoRA weights that cannot be used with this model; the message says why, for the user."""


# A checked LoRA: its tensors (on the CPU, ``state_dict``) and the SHA-256 of the file they came from.
LoraWeights = TensorFile
# Checked LoRAs by content hash, least recently used out first.
LoraCache = TensorFileCache


def process_lora_cache(settings: Settings) -> LoraCache:
    """The process's LoRA cache: one for both XL predictors, which share their SDXL base."""
    return process_tensor_file_cache("lora", settings.lora_cache_bytes)


def _split(key: str) -> tuple[str, str]:
    """``("unet.<module path>", ending)`` of a converted LoRA key."""
    for ending in (*_DOWN, *_UP, *_OTHER):
        if key.endswith(ending):
            return key.removesuffix(ending), ending
    raise LoraError(f"{key!r} is not a LoRA layer diffusers can load")


def check_fits(state_dict: Mapping[str, torch.Tensor], pipe: Any) -> None:
    """Refuse a LoRA whose layers do not fit ``pipe``'s UNet and text encoders (names and shapes).

    Reads the pipeline's modules, never changes them. The keys are first converted as
    ``load_lora_weights`` would (kohya / A1111 names to diffusers'), so what passes here loads.
    """
    converted, _alphas = pipe.lora_state_dict(dict(state_dict), unet_config=pipe.unet.config)
    if not converted:
        raise LoraError("the file holds no LoRA layers")
    models = {name: getattr(pipe, name) for name in COMPONENTS}
    fitted = 0
    for key, tensor in converted.items():
        path, ending = _split(key)
        component, _, module_path = path.partition(".")
        model = models.get(component)
        if model is None:
            raise LoraError(f"layer {key!r} is not for SDXL's UNet or text encoders: is this an SDXL LoRA?")
        if component != "unet" and not hasattr(model, "text_model"):
            module_path = module_path.removeprefix("text_model.")
        try:
            weight = model.get_submodule(module_path).weight
        except AttributeError:
            raise LoraError(
                f"layer {key!r} names no layer of this model's {component}: is this an SDXL LoRA?"
            ) from None
        if ending in _DOWN and (tensor.ndim < 2 or tensor.shape[1] != weight.shape[1]):
            raise LoraError(
                f"layer {key!r} takes {tensor.shape[1] if tensor.ndim > 1 else '?'} inputs where this model's "
                f"{component} layer takes {weight.shape[1]}: the LoRA is for another base model"
            )
        if ending in _UP and tensor.shape[0] != weight.shape[0]:
            raise LoraError(
                f"layer {key!r} gives {tensor.shape[0]} outputs where this model's {component} layer gives "
                f"{weight.shape[0]}: the LoRA is for another base model"
            )
        fitted += ending in _DOWN
    if not fitted:
        raise LoraError("the file holds no LoRA layers")


def fetch_lora(uri: str, ctx: PredictContext, pipe: Any, cache: LoraCache, settings: Settings) -> LoraWeights:
    """The checked LoRA behind ``uri``: from the cache when its content is known there, else fetched,
    checked against ``pipe`` and cached."""
    try:
        return load_tensor_file(
            uri,
            ctx,
            cache,
            max_bytes=settings.lora_max_bytes,
            timeout_s=settings.lora_fetch_timeout_s,
            check=check_lora_header,
            verify=lambda lora: check_fits(lora.tensors, pipe),
            name="lora_weights",
        )
    except TensorFileError as exc:
        raise LoraError(str(exc)) from None


@contextmanager
def lora_applied(pipe: Any, lora: LoraWeights | None, scale: float) -> Iterator[None]:
    """Run the body with ``lora`` loaded into ``pipe`` at ``scale``; unloaded afterwards, however the body ends.

    A compiled UNet runs eagerly for the call (``uncompiled``): diffusers loads, weighs and unloads LoRA
    layers only in a module it recognises, and the compiled graphs hold no LoRA layers.
    """
    if lora is None:
        yield
        return
    with uncompiled(pipe, "unet"):
        try:
            pipe.load_lora_weights(dict(lora.state_dict), adapter_name=ADAPTER_NAME)
            pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
        except Exception as exc:
            remove_loras(pipe)
            raise LoraError(f"could not load lora_weights into the model: {exc}") from exc
        try:
            yield
        finally:
            remove_loras(pipe)


def remove_loras(pipe: Any) -> None:
    """Take every LoRA layer out of the pipeline's UNet and text encoders, restoring the original modules."""
    pipe.unload_lora_weights()
    leftover = [name for name in COMPONENTS if _has_lora_layers(getattr(pipe, name))]
    if leftover:  # never serve another prediction from a pipeline that still carries a LoRA
        raise RuntimeError(f"LoRA layers were left in {leftover} after unloading")


def _has_lora_layers(model: torch.nn.Module) -> bool:
    return any(hasattr(module, "lora_A") for module in model.modules())
