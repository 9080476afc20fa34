"""LoRA weights per request for the XL models: fetch, check, cache, and apply for one pipeline call only.

- **Fetch** (``prepare``, possibly in the prefetch thread): an uploaded file from storage or an https
  URL through the SSRF guard, at most ``KILN_LORA_MAX_BYTES`` (``PredictContext.load_file``).
- **Check**: the bytes must be a safetensors file (parsed by ``safetensors``; a pickle is never
  loaded) of LoRA layers that fit this SDXL base: every layer names a module of the UNet or a text
  encoder (after diffusers' conversion of kohya / A1111 names) with the shapes the LoRA expects. The
  check reads the shared modules' shapes only: it never changes the pipeline another thread runs.
- **Cache**: checked LoRAs are kept per process, by the SHA-256 of their bytes, least recently used
  out first within ``KILN_LORA_CACHE_BYTES``. An uploaded file's digest is on its record, so a cached
  upload is not even read again.
- **Apply** (``generate``): ``lora_applied`` loads the LoRA into the UNet and text encoders under one
  adapter name (diffusers' PEFT integration), sets its scale, and unloads it when the call ends, however
  it ends: the next prediction runs on the untouched base, bit for bit. The LoRA is never fused: fusing
  and unfusing rounds the base weights, which would leak into later predictions.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from models.kit.contract import PredictContext
from shared.inputs.lora import LoraInputError, check_lora_header, read_safetensors_header
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


@dataclass(frozen=True)
class LoraWeights:
    """A checked LoRA: its tensors (on the CPU) and the SHA-256 of the file they came from."""

    sha256: str
    state_dict: Mapping[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.state_dict.values())


class LoraCache:
    """Checked LoRAs by content hash, least recently used out first beyond ``max_bytes``; thread-safe
    (the prefetch thread and the worker's thread both prepare jobs)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, LoraWeights] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> LoraWeights | None:
        with self._lock:
            weights = self._entries.get(sha256)
            if weights is not None:
                self._entries.move_to_end(sha256)
            return weights

    def put(self, weights: LoraWeights) -> None:
        """Keep ``weights`` (a LoRA larger than the whole cache is not kept)."""
        if weights.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries[weights.sha256] = weights
            self._entries.move_to_end(weights.sha256)
            while self.nbytes > self.max_bytes:
                self._entries.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(weights.nbytes for weights in self._entries.values())

    def __contains__(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._entries


_caches: dict[int, LoraCache] = {}
_caches_lock = threading.Lock()


def process_lora_cache(settings: Settings) -> LoraCache:
    """The process's LoRA cache: one for both XL predictors, which share their SDXL base."""
    with _caches_lock:
        return _caches.setdefault(settings.lora_cache_bytes, LoraCache(settings.lora_cache_bytes))


def parse_lora(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors LoRA file, which must hold LoRA layers only; never unpickles anything."""
    try:
        check_lora_header(read_safetensors_header([data]))
        return load_safetensors(data)
    except LoraInputError as exc:
        raise LoraError(str(exc)) from None
    except (SafetensorError, ValueError) as exc:
        raise LoraError(f"not a valid safetensors file: {exc}") from None


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
    known = ctx.file_digest(uri)
    if known is not None and (cached := cache.get(known)) is not None:
        ctx.log("Using cached lora_weights")
        return cached
    data = ctx.load_file(uri, max_bytes=settings.lora_max_bytes, timeout_s=settings.lora_fetch_timeout_s)
    sha256 = hashlib.sha256(data).hexdigest()
    if (cached := cache.get(sha256)) is not None:
        ctx.log("Using cached lora_weights")
        return cached
    state_dict = parse_lora(data)
    del data
    check_fits(state_dict, pipe)
    weights = LoraWeights(sha256, state_dict)
    cache.put(weights)
    ctx.log(f"Loaded lora_weights ({weights.nbytes / 2**20:.1f} MiB, {len(state_dict)} tensors)")
    return weights


@contextmanager
def lora_applied(pipe: Any, lora: LoraWeights | None, scale: float) -> Iterator[None]:
    """Run the body with ``lora`` loaded into ``pipe`` at ``scale``; unloaded afterwards, however the body ends."""
    if lora is None:
        yield
        return
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
