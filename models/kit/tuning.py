"""Per-device throughput knobs: resolved from settings once, applied to each loaded pipeline.

Every knob is a setting; a knob left unset is on for CUDA and off elsewhere, so the CPU (tiny
profile, tests) runs the plain pipeline and a GPU worker gets the fast one with no configuration.
What each knob buys is in docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

from models.kit.devices import dtype_for, resolve_device
from shared.settings import Settings

log = logging.getLogger(__name__)

# Micro-batch size on CUDA when max_batch_size is unset: SDXL at 1024² fills an H100 at 2-4.
CUDA_DEFAULT_BATCH = 4
# The most images one prediction asks for (SD2's num_outputs; the XL models take 4), and the row count's
# factor under classifier-free guidance: with the size buckets and the batch size, they bound the shapes
# a compiled module meets (``recompile_limit``).
MAX_OUTPUTS = 8
GUIDANCE_ROWS = 2
# SD2 and the SDXL models run diffusers' same UNet and VAE classes: one code object, one count of graphs.
MODEL_FAMILIES = 2
# A UNet with the fast mode's feature reuse has a graph per kind of step at each shape: quality, refresh, reuse.
STEP_KINDS = 3
# The modules of a diffusers pipeline that run per denoising step (or decode), which the knobs touch.
HOT_MODULES = ("unet", "controlnet", "vae")

Size = tuple[int, int]


def parse_buckets(text: str) -> tuple[Size, ...]:
    """``"1024x1024,1152x896"`` → ``((1024, 1024), (1152, 896))``; every side a multiple of 8."""
    buckets = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        width, _, height = entry.lower().partition("x")
        size = (int(width), int(height))
        if min(size) < 64 or any(side % 8 for side in size):
            raise ValueError(f"size bucket {entry!r}: each side must be a multiple of 8, at least 64")
        buckets.append(size)
    return tuple(buckets)


def snap_to_bucket(size: Size, buckets: tuple[Size, ...]) -> Size:
    """The bucket nearest ``size`` in log distance per side (so neither side is stretched far); ``size``
    itself when there are no buckets. Generating at a few fixed shapes lets compiled graphs be reused."""
    if not buckets:
        return size
    width, height = size
    return min(buckets, key=lambda b: abs(math.log(b[0] / width)) + abs(math.log(b[1] / height)))


@dataclass(frozen=True)
class Tuning:
    device: torch.device
    dtype: torch.dtype
    max_batch_size: int
    batch_window_s: float
    prefetch: bool
    async_upload: bool
    channels_last: bool
    fuse_qkv: bool
    compile: bool
    compile_mode: str
    compile_backend: str
    compile_fullgraph: bool
    # Empty when sizes are not snapped.
    buckets: tuple[Size, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> Tuning:
        device = resolve_device(settings.device)
        on_cuda = device.type == "cuda"

        def auto(value: bool | None) -> bool:
            return on_cuda if value is None else value

        snap = settings.torch_compile if settings.snap_to_buckets is None else settings.snap_to_buckets
        return cls(
            device=device,
            dtype=dtype_for(device, settings.cuda_dtype),
            max_batch_size=settings.max_batch_size or (CUDA_DEFAULT_BATCH if on_cuda else 1),
            batch_window_s=settings.batch_window_ms / 1000,
            prefetch=auto(settings.prefetch),
            async_upload=auto(settings.async_upload),
            channels_last=auto(settings.channels_last),
            fuse_qkv=auto(settings.fuse_qkv),
            compile=settings.torch_compile,
            compile_mode=settings.compile_mode,
            compile_backend=settings.compile_backend,
            compile_fullgraph=settings.compile_fullgraph,
            buckets=parse_buckets(settings.size_buckets) if snap else (),
        )

    def generation_size(self, size: Size) -> Size:
        return snap_to_bucket(size, self.buckets)


def fuse_qkv(model: torch.nn.Module) -> bool:
    """Fuse each attention's Q/K/V (self-attention) or K/V (cross-attention) projections into one matmul.

    Refused (False) for models whose processors carry extra projections, e.g. IP-Adapter's: fusing
    would replace those processors and silently drop the image prompt.
    """
    processors = getattr(model, "attn_processors", {})
    if not processors or any(not isinstance(p, (AttnProcessor2_0, FusedAttnProcessor2_0)) for p in processors.values()):
        return False
    if all(isinstance(p, FusedAttnProcessor2_0) for p in processors.values()):
        return True
    for module in model.modules():
        if isinstance(module, Attention):
            module.fuse_projections(fuse=True)
    # torch types a Module's attributes as Tensor | Module; a model with attention processors is a
    # diffusers model, which has this method.
    model.set_attn_processor(FusedAttnProcessor2_0())  # type: ignore[operator]
    return True


# A module shared by two pipelines (the SDXL UNet) is compiled once.
_compiled_modules: weakref.WeakKeyDictionary[torch.nn.Module, Callable[..., Any]] = weakref.WeakKeyDictionary()


def recompile_limit(tuning: Tuning) -> int:
    """The graphs one compiled forward may need: one per shape (``dynamic=False``), every size bucket at every
    row count a call can have and kind of step, for each model family running the class. dynamo's default (8)
    is far below it, and a ``fullgraph`` module past its limit fails the call."""
    shapes = max(1, len(tuning.buckets)) * tuning.max_batch_size * MAX_OUTPUTS * GUIDANCE_ROWS
    return shapes * STEP_KINDS * MODEL_FAMILIES


def _raise_recompile_limits(tuning: Tuning) -> None:
    config = torch._dynamo.config
    needed = recompile_limit(tuning)
    config.recompile_limit = max(config.recompile_limit, needed)
    # Across every compiled frame: UNet, ControlNet, VAE decoder, and the few small frames around them.
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * needed)


def compiled(model: torch.nn.Module, tuning: Tuning) -> Callable[..., Any]:
    """``model`` compiled whole (``compile_fullgraph``): a graph break is an error when first traced, instead
    of a model that silently runs part eager (and, with CUDA graphs, in pieces)."""
    _raise_recompile_limits(tuning)
    if model not in _compiled_modules:
        mode = tuning.compile_mode if tuning.compile_backend == "inductor" else None
        _compiled_modules[model] = torch.compile(
            model, mode=mode, backend=tuning.compile_backend, dynamic=False, fullgraph=tuning.compile_fullgraph
        )
    return _compiled_modules[model]


def _decoder_compiled(vae: torch.nn.Module, tuning: Tuning) -> torch.nn.Module:
    """A view of ``vae`` whose decoder runs compiled: the same parameters and buffers, its own table of
    child modules. The pipelines call ``vae.decode`` (a method a compiled module would not reach), and the
    VAE may be shared with pipelines that run it eagerly (the SDXL base), so the VAE itself is left as it is.
    """
    view = copy.copy(vae)
    view._modules = dict(vae._modules)
    decoder = vae.get_submodule("decoder")
    view._modules["decoder"] = cast(torch.nn.Module, compiled(getattr(decoder, "_orig_mod", decoder), tuning))
    return view


@contextmanager
def uncompiled(pipe: Any, name: str) -> Iterator[None]:
    """For one call: the pipeline's ``name`` module run eagerly when it is compiled (as it is otherwise).

    For calls that change the module (a LoRA's layers): its graphs hold none of it, and diffusers' LoRA
    methods pass over a compiled module (it is no ``ModelMixin``).
    """
    module = getattr(pipe, name, None)
    inner = getattr(module, "_orig_mod", None)
    if inner is None:
        yield
        return
    setattr(pipe, name, inner)
    try:
        yield
    finally:
        setattr(pipe, name, module)


def optimise_pipeline(pipe: Any, tuning: Tuning) -> list[str]:
    """Apply the knobs to a loaded pipeline's hot modules; returns what was applied, for the log."""
    applied = []
    for name in HOT_MODULES:
        model = getattr(pipe, name, None)
        if model is None:
            continue
        model = getattr(model, "_orig_mod", model)
        if tuning.channels_last:
            model.to(memory_format=torch.channels_last)
            applied.append(f"{name}:channels_last")
        if tuning.fuse_qkv:
            applied.append(f"{name}:fused_qkv" if fuse_qkv(model) else f"{name}:unfused(ip-adapter)")
        if tuning.compile and name == "vae":
            setattr(pipe, name, _decoder_compiled(model, tuning))
            applied.append(f"vae:decoder_compiled({tuning.compile_backend})")
        elif tuning.compile:
            setattr(pipe, name, compiled(model, tuning))
            applied.append(f"{name}:compiled({tuning.compile_backend})")
    log.info("pipeline %s tuned: %s", type(pipe).__name__, ", ".join(applied) or "nothing")
    return applied
