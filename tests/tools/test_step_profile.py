"""The GPU kit's step profile: where a profiled call's kernel time is counted, on a made-up trace (a CPU
profile has no kernels to count), and the ranges a real call marks, on the tiny SD2 pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import pytest
import torch
from torch.autograd import DeviceType

from models.registry import find_model
from shared.settings import Settings
from tests.support.fakes import FakeContext
from tools.gpu_kit import step_profile, truth
from tools.gpu_kit.step_profile import CALL, CONTROLNET, LOOP, UNET, VAE_DECODE


class Kernel(NamedTuple):
    name: str
    device: int
    duration: float


@dataclass
class Event:
    """What ``step_profile`` reads of torch's ``FunctionEvent``."""

    name: str
    cpu_time_total: float
    cpu_children: list[Event] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    device_type: DeviceType = DeviceType.CPU


def launch(name: str, host_us: float, kernel_us: float) -> Event:
    """An op whose runtime call launched one kernel."""
    runtime = Event("cudaLaunchKernel", host_us / 2, kernels=[Kernel(f"{name}_kernel", 0, kernel_us)])
    return Event(name, host_us, cpu_children=[runtime])


def trace() -> list[Event]:
    """Two steps of UNet (250 µs of kernels), ControlNet (80 µs) and a scheduler op (20 µs); a decode (40 µs);
    a text encoder before the loop (30 µs). Ranges carry their GPU-side copy among their kernels, as torch
    attaches it, and the GPU-side range is also an event of its own."""
    steps = []
    for _ in range(2):
        unet = Event(UNET, 300, cpu_children=[launch("aten::conv", 290, 250)], kernels=[Kernel(UNET, 0, 260)])
        controlnet = Event(CONTROLNET, 100, cpu_children=[launch("aten::mm", 90, 80)])
        steps += [controlnet, unet, launch("aten::add", 10, 20)]
    loop = Event(LOOP, 800, cpu_children=steps, kernels=[Kernel(LOOP, 0, 700)])
    vae = Event(VAE_DECODE, 50, cpu_children=[launch("aten::conv", 45, 40)])
    call = Event(CALL, 1000, cpu_children=[launch("aten::linear", 40, 30), loop, vae])
    events = [call, call.cpu_children[0], loop, *steps, vae]
    return [*events, Event(UNET, 260, device_type=DeviceType.CUDA)]


def test_each_range_counts_the_kernels_launched_within_it_once() -> None:
    totals = step_profile.spans(trace())
    assert (totals[UNET].calls, totals[UNET].host_us, totals[UNET].gpu_us) == (2, 600, 500)
    assert (totals[CONTROLNET].calls, totals[CONTROLNET].gpu_us) == (2, 160)
    assert totals[LOOP].gpu_us == 2 * (250 + 80 + 20)
    assert totals[CALL].gpu_us == 700 + 40 + 30 and totals[VAE_DECODE].gpu_us == 40


def test_the_summary_splits_a_step_into_modules_other_kernels_and_gpu_idle() -> None:
    summary = step_profile.summarise(step_profile.spans(trace()), 2, 1, loop_ms=1.0, call_ms=2.0, on_gpu=True)
    step = summary["per_step_ms"]
    assert step["wall"] == 0.5 and step["host"] == 0.4
    assert step["unet"] == {"calls": 1, "host": 0.3, "gpu": 0.25}
    assert step["controlnet"] == {"calls": 1, "host": 0.1, "gpu": 0.08}
    assert step["other_gpu"] == 0.02
    assert step["gpu_idle"] == 0.15  # 1.0 ms of loop, 0.7 ms of its kernels, over 2 steps
    assert summary["vae_decode_ms"] == {"calls": 1, "host": 0.05, "gpu": 0.04}
    assert summary["outside_loop_ms"] == {"wall": 1.0, "gpu": 0.07}
    assert summary["gpu_busy_share"] == 0.385 and summary["clock"] == "cuda events"
    assert summary["kernels"] == {"per_step": 3, "call": 8}  # UNet, ControlNet, scheduler; then decode, text


def test_on_a_cpu_the_summary_has_host_times_and_no_gpu_ones() -> None:
    summary = step_profile.summarise(step_profile.spans(trace()), 2, 1, loop_ms=1.0, call_ms=2.0, on_gpu=False)
    step = summary["per_step_ms"]
    assert step["unet"] == {"calls": 1, "host": 0.3, "gpu": None}
    assert step["other_gpu"] is None and step["gpu_idle"] is None and summary["gpu_busy_share"] is None
    assert summary["kernels"] is None
    assert summary["clock"] == "host"


@pytest.fixture(scope="module")
def sd2(make_settings: Callable[..., Settings]) -> tuple[object, object]:
    """The tiny SD2 predictor and one 3-step job."""
    from worker.predictor_pool import PredictorPool

    spec = find_model("kiln/sd2-depth2img")
    predictor = PredictorPool(make_settings()).get(spec)
    inputs = truth.workload(spec.ref, on_cuda=False, side=64, steps=3).inputs | {"seed": 0}
    return predictor, predictor.prepare(spec.input_model(**inputs), FakeContext())


def test_a_profiled_call_marks_each_unet_call_and_the_decode_then_leaves_the_pipeline_as_it_was(
    sd2: tuple,
) -> None:
    predictor, job = sd2
    pipe = predictor.pipe
    calls = []

    def call() -> None:
        calls.append(predictor.generate([job], FakeContext().step_callback()))

    hooks = dict(pipe.unet._forward_pre_hooks), dict(pipe.unet._forward_hooks)  # the fast mode's own stay
    summary = step_profile.profile_call(pipe, call, torch.device("cpu"), steps=3, batch=1)
    assert len(calls) == 2  # a warm-up, then the profiled call
    assert summary["per_step_ms"]["unet"]["calls"] == 1 and summary["per_step_ms"]["controlnet"] is None
    assert summary["vae_decode_ms"]["calls"] == 1
    assert 0 < summary["per_step_ms"]["unet"]["host"] <= summary["per_step_ms"]["host"]
    assert "decode" not in vars(pipe.vae)
    assert (dict(pipe.unet._forward_pre_hooks), dict(pipe.unet._forward_hooks)) == hooks


def test_a_call_that_never_reaches_its_unet_is_an_error(sd2: tuple) -> None:
    predictor, _ = sd2
    with pytest.raises(RuntimeError, match="never reached its UNet"):
        step_profile.profile_call(predictor.pipe, lambda: None, torch.device("cpu"), steps=3, batch=1)
