"""``make bench-gpu``: per-image time, best batch size, images per minute, GPU idle share, peak memory.

For each model it sets up the predictor with the configured weights profile and measures:

- per-image time of the denoising call (``Predictor.generate``) at batch 1 and at each batch
  size, after one warm-up call per size (compiled graphs, cuDNN autotuning); the best batch size
  is the one with the lowest time per image, and images/minute follows from it;
- the GPU idle share between jobs: ``--jobs`` predictions queued at once and run one Celery
  delivery at a time through the real ``PredictionRunner`` (fakeredis, in-memory storage), once
  with every overlap knob off and once with prefetch, background uploads and micro-batching on;
  idle is the time between one denoising call's end and the next one's start (on CUDA the call
  returns after the images reached the host, so its end is a synchronised GPU timestamp);
- peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on a CPU.

On a CUDA machine run it with ``KILN_WEIGHTS_PROFILE=random-full`` (full-size architectures,
random weights, no download) or ``full``; on a CPU it runs the same harness on the tiny profile,
so that it stays tested: those numbers say nothing about a GPU.
Usage: ``python -m tests.bench.bench_gpu [--models ...] [--batch-sizes 1,2,4] [--jobs 6]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import fakeredis
import torch

from shared.models.registry import find_model
from shared.settings import Settings
from tests.support import data_uri, png_bytes
from tests.worker.fakes import FakeContext
from tests.worker.runner_harness import Harness
from worker.devices import resolve_device
from worker.predictor_pool import PredictorPool
from worker.timeline import gpu_idle_share

MODELS = ("kiln/sd2-depth2img", "kiln/ip-adapter-depth-xl", "kiln/ip-adapter-openpose-xl")


@dataclass(frozen=True)
class Workload:
    """One model's benchmark input: the issue's targets on CUDA, a few tiny steps on a CPU."""

    inputs: dict
    label: str


def workload(model: str, on_cuda: bool) -> Workload:
    if model == "kiln/sd2-depth2img":
        side, steps = (512, 50) if on_cuda else (64, 4)
        # prompt_strength 1.0: all the steps run (the pipeline runs steps * strength).
        inputs = {"input_image": data_uri(png_bytes(side, side, seed=1)), "num_inference_steps": steps,
                  "prompt_strength": 1.0, "prompt": "a red house"}
    else:
        side, steps = (1024, 30) if on_cuda else (64, 4)
        inputs = {"input_image": data_uri(png_bytes(side, side, seed=1)), "ip_image": data_uri(png_bytes(256, 256, 2)),
                  "num_inference_steps": steps, "width": side, "height": side, "prompt": "a red house"}
    return Workload(inputs, f"{side}², {steps} steps")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_image_times(pool: PredictorPool, model: str, work: Workload, batch_sizes: list[int],
                    repeats: int) -> dict[int, float]:
    predictor = pool.get(find_model(model))
    spec_input = find_model(model).input_model
    device = resolve_device(pool.settings.device)
    times = {}
    for size in batch_sizes:
        jobs = [predictor.prepare(spec_input(**work.inputs | {"seed": seed}), FakeContext()) for seed in range(size)]
        predictor.generate(jobs, FakeContext().step_callback())  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            predictor.generate(jobs, FakeContext().step_callback())
        synchronize(device)
        times[size] = (time.perf_counter() - started) / repeats / size
    return times


def idle_share(pool: PredictorPool, model: str, work: Workload, jobs: int, overlap: bool, batch: int) -> tuple[float, float]:
    """(idle share, wall seconds per image) for ``jobs`` queued predictions run delivery by delivery."""
    knobs = {"prefetch": overlap, "async_upload": overlap, "max_batch_size": batch if overlap else 1,
             "batch_window_ms": 0}
    harness = Harness(fakeredis.FakeRedis(), pool.settings.model_copy(update=knobs), pool)
    try:
        for seed in range(jobs):
            harness.submit(model, **work.inputs | {"seed": seed})
        started = time.perf_counter()
        harness.work()
        wall = time.perf_counter() - started
        return gpu_idle_share(harness.timeline)[1], wall / jobs
    finally:
        harness.close()


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB (CUDA allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batch-sizes", default="")
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args(argv)

    on_cuda = resolve_device(os.environ.get("KILN_DEVICE", "auto")).type == "cuda"
    profile = os.environ.get("KILN_WEIGHTS_PROFILE") or ("random-full" if on_cuda else "tiny")
    weights_dir = os.environ.get("KILN_WEIGHTS_DIR") or (
        str(Path(".kiln/weights").resolve()) if profile != "tiny" else tempfile.mkdtemp(prefix="kiln-bench-"))
    settings = Settings(weights_profile=profile, weights_dir=weights_dir)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2,4,8" if on_cuda else "1,2,4")).split(",")]
    jobs = args.jobs or (16 if on_cuda else 6)
    repeats = args.repeats or (3 if on_cuda else 2)
    device = resolve_device(settings.device)
    pool = PredictorPool(settings)

    name = torch.cuda.get_device_name(device) if on_cuda else "CPU (no GPU): numbers are NOT GPU numbers"
    print(f"device: {name}; weights profile: {profile}; torch {torch.__version__}; "
          f"batch sizes {batch_sizes}; {jobs} jobs for the idle share")
    print("| model | workload | s/image @1 | best batch | s/image @best | images/min/GPU | "
          "GPU idle, overlap off | GPU idle, overlap on | wall s/image off → on | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        work = workload(model, on_cuda)
        times = per_image_times(pool, model, work, batch_sizes, repeats)
        best = min(times, key=times.get)
        idle_off, wall_off = idle_share(pool, model, work, jobs, overlap=False, batch=1)
        idle_on, wall_on = idle_share(pool, model, work, jobs, overlap=True, batch=best)
        print(f"| {model} | {work.label} | {times[batch_sizes[0]]:.3f} | {best} | {times[best]:.3f} | "
              f"{60 / times[best]:.0f} | {idle_off:.1%} | {idle_on:.1%} | {wall_off:.3f} → {wall_on:.3f} | "
              f"{peak_memory(device)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
