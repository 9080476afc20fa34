"""Where a pipeline call's time goes: one ``generate`` under ``torch.profiler``, summarised per denoising step.

The modules the pipeline calls are marked as profiler ranges while the call runs (hooks on its UNet and
ControlNet, compiled or not, and a wrapper around its VAE's ``decode``), and so is the denoising loop: from
the first UNet or ControlNet call to the VAE decode. The summary, per step:

- ``wall``: the loop's span on the device's clock (CUDA events; on a CPU, the host's clock) over the steps;
- ``unet``, ``controlnet``: the host's time inside the module's call (launching its kernels, or running it
  on a CPU) and the GPU's time in the kernels it launched;
- ``other_gpu``: the loop's other kernels (scheduler step, guidance);
- ``gpu_idle``: ``wall`` less every kernel of the loop: time the GPU waited on the host (launch-bound
  where it is large, and where ``host`` comes near ``wall``);
- ``host``: the host's time from the loop's start to its end.

The kernels the profiler recorded are counted too (per step, and in the call): a GPU time of 0 beside a
count of 0 means the profiler saw no kernels, not that the GPU did no work.

Then the VAE decode (host and GPU ms per call) and the rest of the call (text encoders, latents set-up,
the image's conversion): ``call_ms`` less the loop. The profiler slows the host down (a few µs per kernel
launch), so the profiled call runs slower than the timed ones; its ``call_s`` is reported beside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, record_function

# The step count the profiled call runs: per-step costs do not depend on it, the trace's size does.
PROFILE_STEPS = 10
CALL = "kiln.call"
LOOP = "kiln.loop"
UNET = "kiln.unet"
CONTROLNET = "kiln.controlnet"
VAE_DECODE = "kiln.vae_decode"
RANGES = (CALL, LOOP, UNET, CONTROLNET, VAE_DECODE)


class DeviceClock:
    """Timestamps on the device's clock: CUDA events in the stream's order on a GPU, the host's clock on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: dict[str, Any] = {}

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks[name] = event
        else:
            self.marks[name] = time.perf_counter()

    def elapsed_ms(self, start: str, end: str) -> float | None:
        """Milliseconds from ``start`` to ``end`` (after a synchronize), or None where either was not marked."""
        if start not in self.marks or end not in self.marks:
            return None
        if self.cuda:
            return float(self.marks[start].elapsed_time(self.marks[end]))
        return (self.marks[end] - self.marks[start]) * 1000


@dataclass
class Marks:
    """Profiler ranges around a pipeline's UNet, ControlNet and VAE decode calls, and around its denoising loop."""

    pipe: Any
    clock: DeviceClock
    open_ranges: dict[str, record_function] = field(default_factory=dict)

    def open(self, name: str) -> None:
        if name in self.open_ranges:  # a module calling itself, which no pipeline does: the outer call counts
            return
        mark = record_function(name)
        mark.__enter__()
        self.open_ranges[name] = mark

    def close(self, name: str) -> None:
        mark = self.open_ranges.pop(name, None)
        if mark is not None:
            mark.__exit__(None, None, None)

    def start_loop(self) -> None:
        if "loop_start" not in self.clock.marks:
            self.clock.mark("loop_start")
            self.open(LOOP)

    def end_loop(self) -> None:
        if "loop_start" in self.clock.marks and "loop_end" not in self.clock.marks:
            self.close(LOOP)
            self.clock.mark("loop_end")

    @contextmanager
    def installed(self) -> Iterator[Marks]:
        """The hooks and the VAE wrapper, for one call; removed after it, whatever happens."""
        with ExitStack() as stack:
            for name, attribute in ((UNET, "unet"), (CONTROLNET, "controlnet")):
                module = getattr(self.pipe, attribute, None)
                if isinstance(module, torch.nn.Module):
                    stack.callback(module.register_forward_pre_hook(self._before(name)).remove)
                    stack.callback(module.register_forward_hook(self._after(name), always_call=True).remove)
            vae = getattr(self.pipe, "vae", None)
            if vae is not None:
                vae.decode = self._decoding(vae.decode)  # an instance attribute: the method is left
                stack.callback(vars(vae).pop, "decode", None)
            stack.callback(lambda: [self.close(name) for name in reversed(list(self.open_ranges))])
            yield self

    def _before(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any) -> None:
            self.start_loop()
            self.open(name)

        return hook

    def _after(self, name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            self.close(name)

        return hook

    def _decoding(self, decode: Callable[..., Any]) -> Callable[..., Any]:
        def decoding(*args: Any, **kwargs: Any) -> Any:
            self.end_loop()
            with record_function(VAE_DECODE):
                return decode(*args, **kwargs)

        return decoding


def kernel_totals(event: Any, memo: dict[int, tuple[float, int]]) -> tuple[float, int]:
    """Microseconds and count of the GPU kernels launched within ``event``, its children's included (on a CPU:
    none). A range's own entry among its ``kernels`` is the GPU-side copy of the range itself, not a kernel:
    left out."""
    key = id(event)
    if key not in memo:
        own = [kernel.duration for kernel in event.kernels if kernel.name != event.name]
        children = [kernel_totals(child, memo) for child in event.cpu_children]
        memo[key] = (sum(own) + sum(us for us, _ in children), len(own) + sum(count for _, count in children))
    return memo[key]


@dataclass
class Span:
    """One range's calls, host time and kernel time (µs), and its kernels, summed."""

    calls: int = 0
    host_us: float = 0.0
    gpu_us: float = 0.0
    kernels: int = 0


def spans(events: Sequence[Any]) -> dict[str, Span]:
    """Each of ``RANGES``' host-side ranges summed over the profiled call."""
    totals = {name: Span() for name in RANGES}
    memo: dict[int, tuple[float, int]] = {}
    for event in events:
        if event.name in totals and event.device_type == DeviceType.CPU:
            span = totals[event.name]
            gpu_us, kernels = kernel_totals(event, memo)
            span.calls += 1
            span.host_us += event.cpu_time_total
            span.gpu_us += gpu_us
            span.kernels += kernels
    return totals


def summarise(
    totals: dict[str, Span], steps: int, batch: int, loop_ms: float, call_ms: float, on_gpu: bool
) -> dict[str, Any]:
    """The report's ``profile`` entry: per step, the VAE decode, the rest of the call (ms; GPU times None on a CPU)."""

    def ms(us: float, per: int = 1) -> float:
        return round(us / 1000 / per, 3)

    def gpu_ms(us: float, per: int = 1) -> float | None:
        return ms(us, per) if on_gpu else None

    def module(span: Span) -> dict[str, Any] | None:
        if not span.calls:
            return None
        return {"calls": span.calls / steps, "host": ms(span.host_us, steps), "gpu": gpu_ms(span.gpu_us, steps)}

    call, loop, unet, controlnet, vae = (totals[name] for name in RANGES)
    return {
        "batch": batch,
        "steps": steps,
        "clock": "cuda events" if on_gpu else "host",
        "call_s": round(call_ms / 1000, 4),
        "per_step_ms": {
            "wall": round(loop_ms / steps, 3),
            "host": ms(loop.host_us, steps),
            "unet": module(unet),
            "controlnet": module(controlnet),
            "other_gpu": gpu_ms(loop.gpu_us - unet.gpu_us - controlnet.gpu_us, steps),
            "gpu_idle": round(max(0.0, loop_ms - loop.gpu_us / 1000) / steps, 3) if on_gpu else None,
        },
        "vae_decode_ms": {"calls": vae.calls, "host": ms(vae.host_us), "gpu": gpu_ms(vae.gpu_us)},
        "outside_loop_ms": {"wall": round(call_ms - loop_ms, 3), "gpu": gpu_ms(call.gpu_us - loop.gpu_us)},
        "gpu_busy_share": round(call.gpu_us / 1000 / call_ms, 4) if on_gpu and call_ms else None,
        # How many kernels the profiler saw: none on a GPU would mean it saw none (CUDA graph replays, say).
        "kernels": {"per_step": round(loop.kernels / steps, 1), "call": call.kernels} if on_gpu else None,
    }


def profile_call(pipe: Any, call: Callable[[], Any], device: torch.device, steps: int, batch: int) -> dict[str, Any]:
    """``call`` (one ``generate`` running ``steps`` steps through ``pipe``) once to warm up, then once profiled."""

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()
    synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    clock = DeviceClock(device)
    marks = Marks(pipe, clock)
    with torch.profiler.profile(activities=activities) as profiler, marks.installed():
        started = time.perf_counter()
        with record_function(CALL):
            call()
            marks.end_loop()
            synchronize()
        call_ms = (time.perf_counter() - started) * 1000
    loop_ms = clock.elapsed_ms("loop_start", "loop_end")
    if loop_ms is None:
        raise RuntimeError("the profiled call never reached its UNet: no denoising loop to summarise")
    return summarise(spans(profiler.events()), steps, batch, loop_ms, call_ms, clock.cuda)
