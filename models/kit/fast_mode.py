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
  down and up blocks (full resolution, the skip branch) run. The blocks' switch is installed once per
  UNet (``reuse_installed``) and is idle outside fast calls, so a compiled UNet traces it: three graphs per
  shape (quality, refresh and reuse steps), none added per call. (The ``DeepCache`` package's
  ``DeepCacheSDHelper`` runs on diffusers 0.42 too, but it patches a pipeline for good and finds the step
  by looking the timestep up in the scheduler; here the reuse is scoped to one call of a UNet that two XL
  pipelines share.)
- ``float8``: torchao's float8 dynamic quantization of the UNet's and ControlNet's linear layers, on a
  copy made at setup (the quality path keeps the full-precision modules). It needs a CUDA device of
  compute capability 8.9 or more (Ada, Hopper) and torchao; elsewhere it is skipped with a log line.
  With ``KILN_TORCH_COMPILE`` the copies are compiled as the quality modules are (``FastMode.tune``):
  float8's dynamic scaling is many small kernels that Inductor fuses.
"""

from __future__ import annotations

import copy
import functools
import logging
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, cast

import torch
from torch.utils._pytree import tree_map

from models.kit.tuning import Tuning, compiled, optimise_pipeline
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

    def tune(self, pipe: Any, tuning: Tuning) -> list[str]:
        """After the pipeline's own tuning (``optimise_pipeline``): the float8 copies compiled as the quality
        modules are, and feature reuse installed on each UNet a fast call may run, so that a compiled one
        traces it with the rest at warm-up rather than at the first fast prediction."""
        applied = []
        if tuning.compile:
            for name, module in self.float8_modules.items():
                self.float8_modules[name] = cast(torch.nn.Module, compiled(module, tuning))
                applied.append(f"{name}:float8_compiled({tuning.compile_backend})")
        if FastComponent.FEATURE_REUSE in self.components and self.reuse_interval > 1:
            for unet in (pipe.unet, self.float8_modules.get("unet")):
                if unet is not None:
                    reuse_installed(unet)
            applied.append("unet:feature_reuse")
        return applied


def optimised_with_fast_mode(pipe: Any, tuning: Tuning, fast: FastMode) -> list[str]:
    """A loaded pipeline made ready: ``fast``'s float8 copies (of the modules as loaded), the device's knobs
    (``optimise_pipeline``), then ``fast.tune``; what was applied, for the log."""
    applied = fast.prepare_float8(pipe, tuning.device, device_capability(tuning.device))
    applied += optimise_pipeline(pipe, tuning)
    return applied + fast.tune(pipe, tuning)


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
    """One UNet's feature reuse: whether the running call reuses (``active``), its step count, and whether
    this step takes the deep blocks' kept outputs (``reusing``) or runs them and keeps them (a refresh step).

    Installed once per UNet and left there (``reuse_installed``): a compiled UNet traces the reusing
    blocks as part of its graph, guarded on ``active`` and ``reusing``, so it keeps three graphs per shape
    (quality, refresh, reuse) instead of one new one per call.
    """

    def __init__(self) -> None:
        self.active = False
        self.interval = 1
        self.step = -1
        self.reusing = False
        # Per deep block: its output on the last refresh step (a one-item list, empty between calls).
        self.kept: list[list[Any]] = []

    def start(self, interval: int) -> None:
        self.active, self.interval, self.step, self.reusing = True, interval, -1, False

    def stop(self) -> None:
        self.active, self.reusing = False, False
        for kept in self.kept:
            kept.clear()

    def next_step(self) -> None:
        """Before each UNet call of an active call; a refresh step drops the outputs it replaces, so the
        blocks store into an empty list (one graph for every refresh step)."""
        if not self.active:
            return
        self.step += 1
        self.reusing = self.step % self.interval != 0
        if not self.reusing:
            for kept in self.kept:
                kept.clear()

    def keep_own_copies(self) -> None:
        """After a compiled refresh step: the kept outputs copied out of the graph's memory (a CUDA graph
        reuses its output buffers on its next replay)."""
        if self.active and not self.reusing:
            for kept in self.kept:
                kept[:] = [tree_map(_cloned, value) for value in kept]


def _cloned(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


# The inner (uncompiled) UNet → its reuse; a UNet shared by two pipelines (the SDXL one) has one.
_reuse_states: weakref.WeakKeyDictionary[torch.nn.Module, _ReuseState] = weakref.WeakKeyDictionary()
# The compiled wrappers whose calls count steps (``reuse_installed``).
_counting_wrappers: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def deep_blocks(unet: Any) -> list[torch.nn.Module]:
    """The blocks of a diffusers UNet whose outputs are reused: all but the outermost down and up blocks,
    and the mid block."""
    return [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]


def reuse_installed(unet: torch.nn.Module) -> _ReuseState:
    """``unet``'s feature reuse, installed once (idle until ``feature_reuse`` starts it for a call).

    Each deep block's ``forward`` is shadowed (an instance attribute) by one that, on a reusing step of an
    active call, returns the block's output of the last refresh step, and otherwise runs the block (keeping
    its output when active). Steps are counted before each call of the UNet: by a pre-hook on the module
    itself when it runs eagerly (a LoRA call) and, for a compiled UNet, on its wrapper, outside the graph.
    """
    inner = getattr(unet, "_orig_mod", unet)
    state = _reuse_states.get(inner)
    if state is None:
        _drop_copied_reuse(inner)
        state = _reuse_states[inner] = _ReuseState()
        for block in deep_blocks(inner):
            kept: list[Any] = []
            state.kept.append(kept)
            block.forward = _reusing_forward(block, state, kept)
        inner.register_forward_pre_hook(functools.partial(_count_eager_step, state))
    if unet is not inner and unet not in _counting_wrappers:
        _counting_wrappers.add(unet)
        unet.register_forward_pre_hook(lambda module, args: state.next_step())
        unet.register_forward_hook(lambda module, args, output: state.keep_own_copies())
    return state


def _drop_copied_reuse(inner: torch.nn.Module) -> None:
    """A UNet deep-copied from one with reuse installed (a float8 copy) holds that one's block wrappers and
    step hook, which act on the original's blocks and steps: removed before its own are installed."""
    for block in deep_blocks(inner):
        if hasattr(vars(block).get("forward"), "kiln_reuse_of"):
            del block.forward
    for key, hook in list(inner._forward_pre_hooks.items()):
        if getattr(hook, "func", None) is _count_eager_step:
            del inner._forward_pre_hooks[key]


def _count_eager_step(state: _ReuseState, module: torch.nn.Module, args: Any) -> None:
    # Traced into a compiled UNet's graph as nothing: its wrapper counted the step already.
    if not torch.compiler.is_compiling():
        state.next_step()


@contextmanager
def feature_reuse(unet: torch.nn.Module, interval: int) -> Iterator[None]:
    """For one pipeline call: every ``interval``-th UNet call (the first included) runs every block and
    keeps the deep blocks' outputs; the calls between take those outputs instead of running the blocks."""
    state = reuse_installed(unet)
    state.start(interval)
    try:
        yield
    finally:
        state.stop()


def _reusing_forward(block: torch.nn.Module, state: _ReuseState, kept: list[Any]) -> Any:
    def reusing(*args: Any, **kwargs: Any) -> Any:
        if state.active and state.reusing and kept:
            return kept[0]
        # The class's forward, looked up at each call (a test may count its calls).
        output = type(block).forward(block, *args, **kwargs)
        if state.active:
            kept.append(output)
        return output

    reusing.kiln_reuse_of = block  # type: ignore[attr-defined]
    return reusing
