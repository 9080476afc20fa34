"""The opt-in fast mode: predictions with ``speed: "fast"`` trade some pixels for less GPU work.

Three parts, each switched on by ``KILN_FAST_COMPONENTS`` and applied for one pipeline call by
``fast_mode_applied`` (quality calls never see them):

- ``controlnet_cond_only``: under classifier-free guidance the ControlNet runs on the conditional
  half of the batch only and adds nothing to the unconditional half (half its rows). Unlike diffusers'
  ``guess_mode``, the residuals keep their full strength at every depth (no 0.1 → 1 ramp).
- ``feature_reuse``: DeepCache-style reuse of the UNet's deep features across steps. On a refresh step
  (every ``KILN_FAST_REUSE_INTERVAL``-th, the first included) the whole UNet runs and the outputs of its
  deep blocks (every down block but the first, the mid block, every up block but the last) are kept; on
  the steps between, those blocks return what they gave on the refresh step, so only the outermost
  down and up blocks (full resolution, the skip branch) run. A compiled UNet runs eagerly for these
  calls. (The ``DeepCache`` package's ``DeepCacheSDHelper`` runs on diffusers 0.42 too, but it patches
  a pipeline for good and finds the step by looking the timestep up in the scheduler; here the reuse
  is scoped to one call of a UNet that two XL pipelines share.)
- ``float8``: torchao's float8 dynamic quantization of the UNet's and ControlNet's linear layers, on a
  copy made at setup (the quality path keeps the full-precision modules). It needs a CUDA device of
  compute capability 8.9 or more (Ada, Hopper) and torchao; elsewhere it is skipped with a log line.
  The copies are not compiled (``KILN_TORCH_COMPILE`` compiles the quality modules).
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from models.kit.tuning import uncompiled
from shared.inputs.schema import Speed
from shared.settings import Settings

log = logging.getLogger(__name__)

FLOAT8_MIN_CAPABILITY = (8, 9)


class FastComponent(str, Enum):
    CONTROLNET_COND_ONLY = "controlnet_cond_only"
    FEATURE_REUSE = "feature_reuse"
    FLOAT8 = "float8"


def parse_components(text: str) -> frozenset[FastComponent]:
    """``"feature_reuse,float8"`` → those components; an unknown name is an error naming it."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = {component.value: component for component in FastComponent}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown fast-mode components {unknown}; known: {sorted(known)}")
    return frozenset(known[name] for name in names)


def resolve_speed(requested: Speed | None, settings: Settings) -> Speed:
    """The speed a prediction runs at: its ``speed`` input, else the worker's ``KILN_SPEED_DEFAULT``."""
    return requested if requested is not None else Speed(settings.speed_default)


def float8_supported(device: torch.device, capability: tuple[int, int] | None) -> tuple[bool, str]:
    """Whether float8 quantization can run on ``device`` (CUDA ``capability``), and why not."""
    if device.type != "cuda":
        return False, f"float8 needs CUDA, the device is {device.type}"
    if capability is None or capability < FLOAT8_MIN_CAPABILITY:
        return False, f"float8 needs compute capability >= 8.9, the GPU has {capability}"
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False, "float8 needs torchao, which is not installed"
    return True, "float8 available"


def device_capability(device: torch.device) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def float8_quantized(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose linear layers run in float8 (dynamic activation scales, float8 weights)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    quantized = copy.deepcopy(model)
    quantize_(quantized, Float8DynamicActivationFloat8WeightConfig())
    return quantized


@dataclass
class FastMode:
    """What fast calls of one predictor apply: its components, the reuse interval, float8 copies."""

    components: frozenset[FastComponent]
    reuse_interval: int
    # Module name in the pipeline ("unet", "controlnet") → its float8 copy; empty without float8.
    float8_modules: dict[str, torch.nn.Module] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> FastMode:
        return cls(parse_components(settings.fast_components), settings.fast_reuse_interval)

    def prepare_float8(self, pipe: Any, device: torch.device, capability: tuple[int, int] | None) -> list[str]:
        """Make the float8 copies of the pipeline's UNet and ControlNet when float8 is on and can run."""
        if FastComponent.FLOAT8 not in self.components:
            return []
        supported, reason = float8_supported(device, capability)
        if not supported:
            log.info("fast mode: float8 skipped: %s", reason)
            return []
        for name in ("unet", "controlnet"):
            model = getattr(pipe, name, None)
            if model is not None:
                model = getattr(model, "_orig_mod", model)
                if model not in _float8_copies:
                    _float8_copies[model] = float8_quantized(model)
                self.float8_modules[name] = _float8_copies[model]
        return [f"{name}:float8" for name in self.float8_modules]


# A module shared by two pipelines (the SDXL UNet) gets one float8 copy.
_float8_copies: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


@contextmanager
def fast_mode_applied(pipe: Any, fast: FastMode | None, guided: bool, float8: bool = True) -> Iterator[None]:
    """For one pipeline call: ``fast``'s components on ``pipe``; nothing when ``fast`` is None (quality).

    ``float8=False`` keeps the full-precision modules (a LoRA is applied to those). Enter it before
    ``row_scales_applied`` and ``lora_applied``, which act on the UNet the call uses.
    """
    if fast is None:
        yield
        return
    with ExitStack() as stack:
        for name, module in fast.float8_modules.items() if float8 else ():
            stack.enter_context(_module_swapped(pipe, name, module))
        controlnet = getattr(pipe, "controlnet", None)
        # ``is not None``: a compiled module has no truth value (its ``__len__`` raises).
        if guided and FastComponent.CONTROLNET_COND_ONLY in fast.components and controlnet is not None:
            stack.enter_context(_conditional_only(controlnet))
        if FastComponent.FEATURE_REUSE in fast.components and fast.reuse_interval > 1:
            # A compiled UNet's graphs hold neither the reuse switch nor the kept features (nor, with CUDA
            # graphs, outputs that outlive the next replay): reusing calls run it eagerly.
            stack.enter_context(uncompiled(pipe, "unet"))
            stack.enter_context(feature_reuse(pipe.unet, fast.reuse_interval))
        yield


@contextmanager
def _module_swapped(pipe: Any, name: str, module: torch.nn.Module) -> Iterator[None]:
    original = getattr(pipe, name)
    setattr(pipe, name, module)
    try:
        yield
    finally:
        setattr(pipe, name, original)


@contextmanager
def _conditional_only(controlnet: Any) -> Iterator[None]:
    net = getattr(controlnet, "_orig_mod", controlnet)
    if not hasattr(net, "conditional_only"):
        raise TypeError(f"{type(net).__name__} cannot run on the conditional half only")
    net.conditional_only = True
    try:
        yield
    finally:
        net.conditional_only = False


class _ReuseState:
    """The step count of one pipeline call and whether this step reuses the deep features."""

    def __init__(self, interval: int) -> None:
        self.interval = interval
        self.step = -1
        self.reusing = False

    def next_step(self) -> None:
        self.step += 1
        self.reusing = self.step % self.interval != 0


def deep_blocks(unet: Any) -> list[torch.nn.Module]:
    """The blocks of a diffusers UNet whose outputs are reused: all but the outermost down and up blocks,
    and the mid block."""
    return [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]


@contextmanager
def feature_reuse(unet: torch.nn.Module, interval: int) -> Iterator[None]:
    """For one pipeline call: every ``interval``-th UNet call (the first included) runs every block and
    keeps the deep blocks' outputs; the calls between take those outputs instead of running the blocks.

    The UNet's own forward is untouched: each deep block's ``forward`` is shadowed for the call (an
    instance attribute, removed after), and a pre-hook on the module the pipeline calls counts the steps.
    """
    state = _ReuseState(interval)
    inner = getattr(unet, "_orig_mod", unet)
    blocks = deep_blocks(inner)
    for block in blocks:
        block.forward = _reusing_forward(block.forward, state)
    handle = unet.register_forward_pre_hook(lambda module, args: state.next_step())
    try:
        yield
    finally:
        handle.remove()
        for block in blocks:
            del block.forward


def _reusing_forward(forward: Any, state: _ReuseState) -> Any:
    cached: list[Any] = []

    def reusing(*args: Any, **kwargs: Any) -> Any:
        if state.reusing and cached:
            return cached[0]
        output = forward(*args, **kwargs)
        cached[:] = [output]
        return output

    return reusing
