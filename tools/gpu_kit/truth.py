"""``python -m tools.gpu_kit``: every model, stock diffusers against Kiln, in one run within a budget.

For each model (SD2 depth2img at 512², 50 steps; the two XL models at 1024², 30 steps on CUDA; a few
tiny steps at 64² on a CPU), with the ``random-full`` weights profile on CUDA (full-size
architectures, random weights, built on the GPU) and the ``tiny`` profile on a CPU:

1. **stock** (``stock.py``): the plain diffusers pipeline from the same weights, batch 1;
   **Kiln**: its predictor (``setup``, ``prepare``, ``generate``) with its CUDA defaults, batch 1;
   seconds per image of the pipeline call, images per minute, peak and resident GPU memory, and
   the ratio Kiln / stock;
2. Kiln at larger batches (one ``generate`` over several predictions) and the best of them;
3. the GPU idle share between consecutive jobs through the real ``PredictionRunner`` (fakeredis,
   in-memory storage), with every overlap knob off and then on (prefetch, background uploads,
   micro-batching at the best batch size);
4. if time remains, one model compiled (``KILN_TORCH_COMPILE``) at one size, with its compile time;
5. the XL depth model compiled with dynamo's ``eager`` backend (guards, no code generation), run at
   three values of each per-row scale input: the graphs each new value adds (0 when the scales are
   data, one per value when a graph is specialised on them) and the frames left to run eager.

``--run`` picks the measurements (``RUNS``); the compiled modes, the fast mode and where a call's time
goes are ``fastpath``'s.

Measurements run in that order of priority, every model's step 1 before any step 2. Each one's cost
is estimated from those before it and skipped (and listed as skipped) when it would not fit in
``--budget-s``; a failing one is recorded with its error and the run goes on. ``gpu-truth.json``
and ``gpu-truth.md`` are rewritten after every measurement, so a run cut short still leaves numbers.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import fakeredis
import torch
import transformers
from safetensors.torch import save as save_safetensors

from models.kit.contract import Predictor
from models.kit.devices import resolve_device
from models.kit.tuning import Tuning
from models.registry import find_model
from shared.settings import Settings
from tests.support import data_uri, png_bytes
from tests.support.fakes import FakeContext
from tests.support.runner_harness import Harness
from tools.gpu_kit import fastpath, imports, stock
from worker.predictor_pool import PredictorPool
from worker.timeline import gpu_idle_share

KIT_VERSION = 1
MODELS = ("kiln/sd2-depth2img", "kiln/ip-adapter-depth-xl", "kiln/ip-adapter-openpose-xl", "kiln/instantid-xl")
# kiln/instantid-xl is timed from a saved face (a random unit embedding, as return_embeddings writes it):
# the face models are not what is measured, and random-full's find no face.
INSTANTID = "kiln/instantid-xl"
FACE_URL = "https://gpu-kit.invalid/face.safetensors"
RESULT_NAME = "gpu-truth"
# Estimates are padded by this much before they are held against the time left.
SAFETY = 1.25
# Kiln's first XL setup also loads the shared SDXL base; before anything is measured it is a guess.
FIRST_LOAD_GUESS_S = {"cuda": 60.0, "cpu": 30.0}
# What a compiled pass needs at least (compile time is unknown until it has run once).
COMPILE_RESERVE_S = {"cuda": 150.0, "cpu": 600.0}
# The model the recompile count runs on (its inputs and values: ``fastpath.SCALE_VALUES``).
RECOMPILE_MODEL = "kiln/ip-adapter-depth-xl"
# What tracing the XL UNet and ControlNet once with dynamo needs at least.
RECOMPILE_RESERVE_S = {"cuda": 90.0, "cpu": 30.0}
# Weights are built into RAM-backed /dev/shm on the GPU host when it has room for them (SDXL layout
# plus SD2: about 19 GB in fp16), which makes saving and loading them seconds.
SHM_NEEDED_BYTES = 24 * 2**30
WEIGHTS_NOTES = {
    "random-full": "random weights: full-size architectures, images are noise",
    "tiny": "random weights: tiny architectures, for testing the kit only",
    "full": "published weights",
}


@dataclass(frozen=True)
class Workload:
    """One model's benchmark input: the issue's targets on CUDA, a few tiny steps on a CPU."""

    inputs: dict[str, Any]
    side: int
    steps: int

    @property
    def label(self) -> str:
        return f"{self.side}², {self.steps} steps"


def face_file() -> bytes:
    """A saved face for kiln/instantid-xl: a random unit ``face_embedding``, no keypoints (the frontal default)."""
    embedding = torch.randn(512, generator=torch.Generator().manual_seed(0))
    return save_safetensors({"face_embedding": embedding / embedding.norm()})


def kit_context() -> FakeContext:
    """The context the kit prepares jobs in: image inputs are data URIs, the one file is the saved face."""
    return FakeContext(files={FACE_URL: face_file()})


def workload(model: str, on_cuda: bool, side: int | None = None, steps: int | None = None) -> Workload:
    """The model's benchmark input; ``side`` and ``steps`` override the defaults (a quick dry run)."""
    if model == INSTANTID:
        side, steps = side or (1024 if on_cuda else 64), steps or (30 if on_cuda else 4)
        inputs = {
            "face_embedding": FACE_URL,
            "num_inference_steps": steps,
            "width": side,
            "height": side,
            "prompt": "a portrait",
        }
        return Workload(inputs, side, steps)
    if model == "kiln/sd2-depth2img":
        side, steps = side or (512 if on_cuda else 64), steps or (50 if on_cuda else 4)
        # prompt_strength 1.0: all the steps run (the pipeline runs steps * strength).
        inputs = {
            "input_image": data_uri(png_bytes(side, side, seed=1)),
            "num_inference_steps": steps,
            "prompt_strength": 1.0,
            "prompt": "a red house",
        }
    else:
        side, steps = side or (1024 if on_cuda else 64), steps or (30 if on_cuda else 4)
        inputs = {
            "input_image": data_uri(png_bytes(side, side, seed=1)),
            "ip_image": data_uri(png_bytes(256, 256, 2)),
            "num_inference_steps": steps,
            "width": side,
            "height": side,
            "prompt": "a red house",
        }
    return Workload(inputs, side, steps)


class Budget:
    """Wall-clock seconds from the kit's start (imports included), and what is left of them."""

    def __init__(self, seconds: float, started: float) -> None:
        self.seconds = seconds
        self.started = started

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, estimate_s: float) -> bool:
        return self.elapsed + estimate_s * SAFETY <= self.seconds


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Memory:
    """GPU memory around a measurement: allocated before it and the peak during it (GiB); on a CPU
    only the process's peak RSS so far, which cannot be reset."""

    device: torch.device
    resident_gib: float | None = None
    peak_gib: float | None = None

    @contextmanager
    def window(self) -> Iterator[Memory]:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.resident_gib = torch.cuda.memory_allocated(self.device) / 2**30
        yield self
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        else:
            self.peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def fields(self) -> dict[str, float | None]:
        return {"peak_gib": _round(self.peak_gib), "resident_gib": _round(self.resident_gib)}


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def timed_calls(call: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float]:
    """``(first call s, mean s of the next repeats)``: the first one warms up (cuDNN autotuning,
    lazy allocations, compiled graphs) and is reported apart."""
    started = time.perf_counter()
    call()
    synchronize(device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    synchronize(device)
    return first, (time.perf_counter() - started) / repeats


throughput = fastpath.throughput


class Report:
    """The run's results, rewritten as JSON and Markdown after every measurement."""

    def __init__(self, out_dir: Path, header: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.data: dict[str, Any] = {
            **header,
            "models": {},
            "compile": None,
            "recompiles": None,
            "skipped": [],
            "errors": [],
            "elapsed_s": 0.0,
            "complete": False,
        }

    def model(self, ref: str) -> dict[str, Any]:
        return self.data["models"].setdefault(ref, {})

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append({"what": what, "why": why})
        print(f"skipped {what}: {why}", flush=True)

    def error(self, what: str, exc: BaseException) -> None:
        tail = traceback.format_exception(exc)[-6:]
        self.data["errors"].append(
            {"what": what, "error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": "".join(tail)[-4000:]}
        )
        print(f"ERROR in {what}: {type(exc).__name__}: {exc}", flush=True)

    def save(self, elapsed: float, complete: bool = False) -> None:
        self.data["elapsed_s"] = round(elapsed, 1)
        self.data["complete"] = complete
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (
            (f"{RESULT_NAME}.json", json.dumps(self.data, indent=2) + "\n"),
            (f"{RESULT_NAME}.md", render_markdown(self.data)),
        ):
            partial = self.out_dir / f".{name}.partial"
            partial.write_text(text)
            os.replace(partial, self.out_dir / name)


def _cell(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def render_markdown(data: dict[str, Any]) -> str:
    versions = data["versions"]
    lines = [
        f"# GPU truth: {data['device']['name']}",
        "",
        f"{data['date']} · weights: **{data['weights']['profile']}** ({data['weights']['note']}) · "
        f"torch {versions['torch']} (CUDA {versions['cuda']}) · diffusers {versions['diffusers']} · "
        f"transformers {versions['transformers']} · Kiln {versions['kiln_commit']} · "
        f"{data['elapsed_s']:.0f} s of a {data['budget_s']:.0f} s budget{'' if data['complete'] else ' (cut short)'}",
        "",
        "Seconds per image of the pipeline call (text encoders, denoising loop, VAE decode; Kiln's "
        "prepare step, overlapped by prefetch in a worker, is listed apart). Kiln / stock < 1 means "
        "Kiln is faster. Idle: share of the time between the first and last denoising call of "
        f"consecutive jobs in which no call ran. Memory: {data['memory_measure']}.",
        "",
        "| model | workload | stock s/img | Kiln s/img @1 | Kiln / stock | best batch | Kiln s/img @best | "
        "images/min @best | GPU idle, overlap off → on | Kiln prepare s | peak GiB stock / Kiln | resident GiB Kiln |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ref, model in data["models"].items():
        kiln = model.get("kiln", {})
        batches = kiln.get("batches", {})
        best = batches.get(str(kiln.get("best_batch")), {})
        one = batches.get("1", {})
        idle = model.get("idle", {})
        idle_cell = " → ".join(
            _cell(idle.get(key, {}).get("idle_share"), digits=3) for key in ("overlap_off", "overlap_on")
        )
        lines.append(
            f"| {ref} | {model.get('workload', {}).get('label', '–')} "
            f"| {_cell(model.get('stock', {}).get('seconds_per_image'))} | {_cell(one.get('seconds_per_image'))} "
            f"| {_cell(model.get('ratio_kiln_over_stock'), digits=2)} | {_cell(kiln.get('best_batch'))} "
            f"| {_cell(best.get('seconds_per_image'))} | {_cell(best.get('images_per_minute'), digits=1)} "
            f"| {idle_cell} | {_cell(kiln.get('prepare_s'))} "
            f"| {_cell(model.get('stock', {}).get('peak_gib'), digits=1)} / {_cell(best.get('peak_gib'), digits=1)} "
            f"| {_cell(one.get('resident_gib'), digits=1)} |"
        )
    compiled = data.get("compile")
    if compiled:
        lines += [
            "",
            f"Compiled ({compiled['model']}, {compiled['workload']}, mode `{compiled['mode']}`): "
            f"compile {_cell(compiled.get('compile_s'), ' s', 1)}, {_cell(compiled.get('seconds_per_image'))} s/image "
            f"at batch 1, {_cell(compiled.get('speedup_over_eager'), '×', 2)} the eager Kiln speed.",
        ]
    recompiles = data.get("recompiles")
    if recompiles:
        per_input = ", ".join(
            f"{name} {entry['new_graphs']} (eager fallbacks {entry['eager_fallbacks']})"
            for name, entry in recompiles["inputs"].items()
        )
        lines += [
            "",
            f"Recompiles ({recompiles['model']}, {recompiles['workload']}, backend `{recompiles['backend']}`): "
            f"new graphs over {len(next(iter(fastpath.SCALE_VALUES.values())))} values of each input: {per_input}.",
        ]
    lines += fastpath.markdown(data)
    for item in data["skipped"]:
        lines.append(f"- skipped {item['what']}: {item['why']}")
    for item in data["errors"]:
        lines.append(f"- **error** in {item['what']}: {item['error'].splitlines()[0]}")
    return "\n".join(lines) + "\n"


def default_weights_dir(on_cuda: bool, profile: str) -> Path:
    if os.environ.get("KILN_WEIGHTS_DIR"):
        return Path(os.environ["KILN_WEIGHTS_DIR"])
    shm = Path("/dev/shm")
    if on_cuda and profile == "random-full" and shm.is_dir() and shutil.disk_usage(shm).free >= SHM_NEEDED_BYTES:
        return shm / "kiln-gpu-kit-weights"
    return Path(".kiln/weights").resolve()


def header(device: torch.device, settings: Settings, budget_s: float) -> dict[str, Any]:
    on_cuda = device.type == "cuda"
    if on_cuda:
        props = torch.cuda.get_device_properties(device)
        device_info = {
            "name": torch.cuda.get_device_name(device),
            "kind": "cuda",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
    else:
        device_info = {
            "name": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores): NOT GPU numbers",
            "kind": "cpu",
        }
    kit_info = Path(".gpu-kit/kit.json")
    commit = json.loads(kit_info.read_text()).get("commit") if kit_info.exists() else _git_commit()
    tuning = Tuning.from_settings(settings)
    return {
        "kit_version": KIT_VERSION,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if on_cuda else None,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "kiln_commit": commit,
        },
        "weights": {"profile": settings.weights_profile, "note": WEIGHTS_NOTES[settings.weights_profile]},
        "kiln_defaults": {
            "dtype": str(tuning.dtype).removeprefix("torch."),
            "channels_last": tuning.channels_last,
            "fuse_qkv": tuning.fuse_qkv,
            "max_batch_size": tuning.max_batch_size,
            "prefetch": tuning.prefetch,
            "async_upload": tuning.async_upload,
            "compile": tuning.compile,
        },
        "memory_measure": "torch.cuda peak allocated during the measurement, and allocated before it (every model "
        "loaded so far)"
        if on_cuda
        else "process peak RSS so far (a CPU cannot reset it)",
        "units": {
            "seconds_per_image": "s",
            "images_per_minute": "1/min",
            "peak_gib": "GiB",
            "resident_gib": "GiB",
            "idle_share": "fraction 0-1",
            "ratio_kiln_over_stock": "Kiln s/image ÷ stock s/image at batch 1",
        },
        "budget_s": budget_s,
    }


def _git_commit() -> str | None:
    head = Path(".git/HEAD")
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (Path(".git") / ref.removeprefix("ref: ")).read_text().strip()[:12]
        return ref[:12]
    except OSError:
        return None


class Kit:
    """One run: the settings, the predictors Kiln keeps resident, prepared jobs, and the report."""

    def __init__(self, args: argparse.Namespace, budget: Budget) -> None:
        self.args = args
        self.budget = budget
        self.device = resolve_device(os.environ.get("KILN_DEVICE", "auto"))
        self.on_cuda = self.device.type == "cuda"
        profile = args.profile or os.environ.get("KILN_WEIGHTS_PROFILE") or ("random-full" if self.on_cuda else "tiny")
        weights_dir = Path(args.weights_dir) if args.weights_dir else default_weights_dir(self.on_cuda, profile)
        # kiln/instantid-xl's weights are non-commercial: a kit run times it, nothing is served.
        self.settings = Settings(weights_profile=profile, weights_dir=weights_dir, allow_noncommercial_models=True)
        self.pool = PredictorPool(self.settings)
        self.report = Report(Path(args.out), header(self.device, self.settings, args.budget_s))
        self.jobs: dict[str, list[Any]] = {}
        self.kind = "cuda" if self.on_cuda else "cpu"

    def save(self, complete: bool = False) -> None:
        self.report.save(self.budget.elapsed, complete)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Run one measurement: record its error instead of stopping the run, then save the report."""
        try:
            yield
        except Exception as exc:
            self.report.error(what, exc)
            if self.on_cuda:
                torch.cuda.empty_cache()
        finally:
            self.save()

    def workload(self, model: str) -> Workload:
        return workload(model, self.on_cuda, self.args.side, self.args.steps)

    def seconds_left(self) -> float:
        return self.budget.seconds - self.budget.elapsed

    def timed(self, call: Callable[[], Any]) -> tuple[float, float]:
        """``timed_calls`` with the run's repeats."""
        return timed_calls(call, self.device, self.args.repeats)

    def predictor(self, model: str) -> Predictor:
        return self.pool.get(find_model(model))

    def prepared(self, model: str, count: int) -> list[Any]:
        """``count`` prepared jobs of the model's workload, seeds 0, 1, ...; prepared once and kept."""
        jobs = self.jobs.setdefault(model, [])
        while len(jobs) < count:
            jobs.append(self.prepare_job(self.predictor(model), model, seed=len(jobs)))
        return jobs[:count]

    def prepare_job(self, predictor: Predictor, model: str, seed: int = 0, **change: Any) -> Any:
        """One job of the model's workload, with ``change`` to its inputs, prepared by ``predictor``."""
        inputs = find_model(model).input_model(**self.workload(model).inputs | {"seed": seed} | change)
        return predictor.prepare(inputs, kit_context())

    def generate_call(self, model: str, batch: int) -> Callable[[], Any]:
        predictor, jobs = self.predictor(model), self.prepared(model, batch)
        return lambda: predictor.generate(jobs, FakeContext().step_callback())

    # -- 1. stock and Kiln at batch 1 ------------------------------------------------------------

    def measure_batch_one(self, model: str) -> None:
        entry = self.report.model(model)
        work = self.workload(model)
        entry["workload"] = {"width": work.side, "height": work.side, "steps": work.steps, "label": work.label}
        guess = FIRST_LOAD_GUESS_S[self.kind]
        if not self.budget.allows(guess):
            self.report.skip(f"{model} batch 1", f"{self.budget.elapsed:.0f} s used, setup alone needs ~{guess:.0f} s")
            return
        with self.step(f"{model} Kiln setup"):
            started = time.perf_counter()
            self.predictor(model)
            kiln = entry.setdefault("kiln", {"batches": {}})
            kiln["setup_s"] = round(time.perf_counter() - started, 2)
            self.prepared(model, 1)  # warms the detectors and encoders up
            started = time.perf_counter()
            self.jobs[model].pop()
            self.prepared(model, 1)
            synchronize(self.device)
            kiln["prepare_s"] = round(time.perf_counter() - started, 4)
            print(f"{model}: Kiln setup {kiln['setup_s']} s, prepare {kiln['prepare_s']} s", flush=True)
        if model not in self.jobs:
            return
        with self.step(f"{model} Kiln batch 1"):
            self.measure_kiln_batch(model, 1, self.args.repeats)
        if self.args.no_stock:
            self.report.skip(f"{model} stock", "--no-stock")
        else:
            with self.step(f"{model} stock batch 1"):
                self.measure_stock(model)
        kiln_one = entry.get("kiln", {}).get("batches", {}).get("1", {}).get("seconds_per_image")
        stock_one = entry.get("stock", {}).get("seconds_per_image")
        if kiln_one and stock_one:
            entry["ratio_kiln_over_stock"] = round(kiln_one / stock_one, 3)
            print(f"{model}: Kiln / stock at batch 1 = {entry['ratio_kiln_over_stock']}", flush=True)
        self.save()

    def measure_kiln_batch(self, model: str, batch: int, repeats: int) -> None:
        call = self.generate_call(model, batch)
        with Memory(self.device).window() as memory:
            first, mean = timed_calls(call, self.device, repeats)
        kiln = self.report.model(model).setdefault("kiln", {"batches": {}})
        kiln["batches"][str(batch)] = {
            "batch": batch,
            **throughput(mean, batch),
            "first_call_s": round(first, 3),
            "calls": repeats,
            **memory.fields(),
        }
        kiln["applied"] = getattr(self.predictor(model), "applied", None)
        print(f"{model}: Kiln batch {batch}: {kiln['batches'][str(batch)]}", flush=True)

    def measure_stock(self, model: str) -> None:
        one_s = self.report.model(model)["kiln"]["batches"]["1"]["seconds_per_image"]
        estimate = self.report.model(model)["kiln"]["setup_s"] + (1 + self.args.repeats) * one_s * 2
        if not self.budget.allows(estimate):
            self.report.skip(
                f"{model} stock", f"needs ~{estimate:.0f} s, {self.budget.seconds - self.budget.elapsed:.0f} s left"
            )
            return
        if model == INSTANTID:
            self.report.skip(f"{model} stock", "diffusers has no InstantID pipeline (only a community one)")
            return
        [job] = self.prepared(model, 1)
        started = time.perf_counter()
        if model == "kiln/sd2-depth2img":
            pipeline = stock.stock_sd2_depth2img(self.settings, job)
        else:
            ip_image = FakeContext().load_image(self.workload(model).inputs["ip_image"])
            pipeline = stock.stock_ip_adapter_xl(self.settings, model, self.predictor(model), job, ip_image)
        load_s = time.perf_counter() - started
        try:
            with Memory(self.device).window() as memory:
                first, mean = timed_calls(pipeline.call, self.device, self.args.repeats)
        finally:
            pipeline.close()
            del pipeline
            gc.collect()
            if self.on_cuda:
                torch.cuda.empty_cache()
        entry = self.report.model(model)
        entry["stock"] = {
            "batch": 1,
            **throughput(mean, 1),
            "first_call_s": round(first, 3),
            "load_s": round(load_s, 2),
            "calls": self.args.repeats,
            **memory.fields(),
        }
        print(f"{model}: stock batch 1: {entry['stock']}", flush=True)

    # -- 2. Kiln's best batch ----------------------------------------------------------------------

    def measure_batches(self, model: str) -> None:
        kiln = self.report.model(model).get("kiln", {})
        one = kiln.get("batches", {}).get("1")
        if one is None:
            return
        for batch in self.args.batch_sizes:
            if batch <= 1 or str(batch) in kiln["batches"]:
                continue
            estimate = (1 + self.args.sweep_repeats) * batch * one["seconds_per_image"] + batch * kiln.get(
                "prepare_s", 0
            )
            if not self.budget.allows(estimate):
                self.report.skip(
                    f"{model} batch {batch}",
                    f"needs ~{estimate:.0f} s, {self.budget.seconds - self.budget.elapsed:.0f} s left",
                )
                break
            failed_before = len(self.report.data["errors"])
            with self.step(f"{model} Kiln batch {batch}"):
                self.measure_kiln_batch(model, batch, self.args.sweep_repeats)
            if len(self.report.data["errors"]) > failed_before:
                break  # out of memory, most likely: larger batches would fail too
        kiln["best_batch"] = int(min(kiln["batches"].values(), key=lambda b: b["seconds_per_image"])["batch"])
        self.save()

    # -- 3. GPU idle share between jobs ------------------------------------------------------------

    def measure_idle(self, model: str) -> None:
        kiln = self.report.model(model).get("kiln", {})
        if "best_batch" not in kiln:
            return
        jobs = self.args.jobs
        per_job = kiln["batches"]["1"]["seconds_per_image"] + kiln.get("prepare_s", 0)
        estimate = 2 * jobs * per_job + 2 * kiln["best_batch"] * per_job  # both runs, and a warm-up batch
        if not self.budget.allows(estimate):
            self.report.skip(
                f"{model} idle share",
                f"needs ~{estimate:.0f} s, {self.budget.seconds - self.budget.elapsed:.0f} s left",
            )
            return
        with self.step(f"{model} idle share"):
            idle = self.report.model(model).setdefault("idle", {"jobs": jobs})
            for key, overlap in (("overlap_off", False), ("overlap_on", True)):
                share, wall = self.idle_share(model, jobs, overlap, kiln["best_batch"] if overlap else 1)
                idle[key] = {
                    "idle_share": round(share, 4),
                    "wall_seconds_per_image": round(wall, 4),
                    "max_batch_size": kiln["best_batch"] if overlap else 1,
                }
                print(f"{model}: idle share, {key}: {idle[key]}", flush=True)

    def idle_share(self, model: str, jobs: int, overlap: bool, batch: int) -> tuple[float, float]:
        """(idle share, wall seconds per image) for ``jobs`` queued predictions run delivery by delivery."""
        knobs = {"prefetch": overlap, "async_upload": overlap, "max_batch_size": batch, "batch_window_ms": 0}
        harness = Harness(fakeredis.FakeRedis(), self.settings.model_copy(update=knobs), self.pool)
        try:
            for seed in range(jobs):
                harness.submit(model, **self.workload(model).inputs | {"seed": seed})
            started = time.perf_counter()
            harness.work()
            wall = time.perf_counter() - started
            return gpu_idle_share(harness.timeline)[1], wall / jobs
        finally:
            harness.close()

    # -- 4. a compiled pass ------------------------------------------------------------------------

    def measure_compiled(self) -> None:
        measured = [m for m in self.args.models if "1" in self.report.model(m).get("kiln", {}).get("batches", {})]
        if self.args.no_compile or not measured:
            self.report.skip("compiled pass", "--no-compile" if self.args.no_compile else "no model was measured")
            return
        model = min(measured, key=lambda m: self.report.model(m)["kiln"]["batches"]["1"]["seconds_per_image"])
        eager = self.report.model(model)["kiln"]["batches"]["1"]["seconds_per_image"]
        reserve = (self.args.compile_reserve_s or COMPILE_RESERVE_S[self.kind]) + (1 + self.args.repeats) * eager
        if not self.budget.allows(reserve):
            self.report.skip(
                "compiled pass",
                f"needs at least ~{reserve:.0f} s, {self.budget.seconds - self.budget.elapsed:.0f} s left",
            )
            return
        with self.step(f"{model} compiled"):
            settings = self.settings.model_copy(
                update={"torch_compile": True, "compile_mode": self.args.compile_mode, "compile_warmup": False}
            )
            pool = PredictorPool(settings)
            predictor = pool.get(find_model(model))
            work = self.workload(model)
            job = self.prepare_job(predictor, model)
            first, mean = timed_calls(
                lambda: predictor.generate([job], FakeContext().step_callback()), self.device, self.args.repeats
            )
            self.report.data["compile"] = {
                "model": model,
                "workload": work.label,
                "mode": self.args.compile_mode,
                "compile_s": round(first - mean, 2),
                **throughput(mean, 1),
                "speedup_over_eager": round(eager / mean, 3),
            }
            print(f"compiled: {self.report.data['compile']}", flush=True)

    # -- 5. recompiles per scale value -----------------------------------------------------------

    def measure_recompiles(self) -> None:
        if self.args.no_compile or RECOMPILE_MODEL not in self.args.models:
            self.report.skip("recompiles", "--no-compile" if self.args.no_compile else f"{RECOMPILE_MODEL} not run")
            return
        reserve = RECOMPILE_RESERVE_S[self.kind]
        if not self.budget.allows(reserve):
            self.report.skip(
                "recompiles", f"needs at least ~{reserve:.0f} s, {self.budget.seconds - self.budget.elapsed:.0f} s left"
            )
            return
        with self.step(f"{RECOMPILE_MODEL} recompiles"):
            settings = self.settings.model_copy(
                update={"torch_compile": True, "compile_backend": "eager", "compile_warmup": False}
            )
            predictor = PredictorPool(settings).get(find_model(RECOMPILE_MODEL))
            first_call_graphs, counts = fastpath.scale_recompiles(self, RECOMPILE_MODEL, predictor)
            self.report.data["recompiles"] = {
                "model": RECOMPILE_MODEL,
                "workload": f"{self.workload(RECOMPILE_MODEL).side}², {fastpath.SCALE_STEPS} steps",
                "backend": "eager",
                "first_call_graphs": first_call_graphs,
                "inputs": counts,
            }
            print(f"recompiles: {self.report.data['recompiles']}", flush=True)

    def measure_compile_modes(self, model: str) -> None:
        fastpath.measure_compile_modes(self, model)

    def measure_fast(self, model: str) -> None:
        fastpath.measure_fast(self, model)

    def measure_profile(self, model: str) -> None:
        fastpath.measure_profile(self, model)

    def measure_compiled_fast(self, model: str) -> None:
        fastpath.measure_compiled_fast(self, model)

    def run(self) -> None:
        print(
            f"GPU truth kit (run {self.args.run}): {self.report.data['device']['name']}; weights "
            f"{self.settings.weights_profile} in {self.settings.resolved_weights_dir}; "
            f"budget {self.args.budget_s:.0f} s",
            flush=True,
        )
        self.report.data["run"] = self.args.run
        self.save()
        fastpath.load_compile_cache(self)
        plan = RUNS[self.args.run]
        for phase in plan.per_model:
            for model in self.args.models:
                if phase in self.args.skip:
                    self.report.skip(f"{model} {phase}", "--skip")
                    continue
                if model in self.args.batch_one_only and phase != "batch_one":
                    self.report.skip(f"{model} {phase}", "--batch-one-only")
                    continue
                getattr(self, f"measure_{phase}")(model)
        for phase in plan.once:
            if phase in self.args.skip:
                self.report.skip(phase, "--skip")
                continue
            getattr(self, f"measure_{phase}")()
        with self.step("compile cache"):
            fastpath.save_compile_cache(self)
        self.report.data["foreign_imports"] = imports.foreign_imports()
        self.save(complete=True)


@dataclass(frozen=True)
class RunPlan:
    """The measurements of one run, in order of priority: per model (every model's before the next
    phase), then once."""

    per_model: tuple[str, ...]
    once: tuple[str, ...]


# A GPU window is about 15 minutes, machine start included: run A and run B each fit one command.
RUNS = {
    # Everything, as far as the budget goes.
    "all": RunPlan(
        ("batch_one", "batches", "idle", "compile_modes", "fast", "compiled_fast", "profile"),
        ("compiled", "recompiles"),
    ),
    # Eager Kiln (and stock) at batch 1 and larger, then the compiled modes with their differences
    # against eager, their recompile counts and where their time goes, then where eager's goes;
    # --compile-cache-out keeps the compile artifacts.
    "A": RunPlan(("batch_one", "batches", "compile_modes", "profile"), ()),
    # On a fresh machine with run A's artifacts (--compile-cache-in): the compiled modes again (warm-cache
    # compile times), then the fast mode, eager and (as far as the budget goes) compiled.
    "B": RunPlan(("batch_one", "compile_modes", "fast", "compiled_fast"), ()),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-kit-out", help="folder for gpu-truth.json/.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock seconds for the whole run")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--batch-sizes", default="", help="comma-separated; default 1,2,4,8 on CUDA, 1,2 on a CPU")
    parser.add_argument(
        "--repeats",
        type=int,
        default=0,
        help="timed calls after the warm-up at batch 1 and compiled (default 2 on CUDA, 1 on a CPU)",
    )
    parser.add_argument("--sweep-repeats", type=int, default=1, help="timed calls after the warm-up at larger batches")
    parser.add_argument(
        "--jobs", type=int, default=0, help="predictions per idle-share run (default 6 on CUDA, 3 on a CPU)"
    )
    parser.add_argument("--profile", choices=("tiny", "random-full", "full"), default=None)
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--side", type=int, default=None, help="image side for every model (default: the targets)")
    parser.add_argument(
        "--steps", type=int, default=None, help="denoising steps for every model (default: the targets)"
    )
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--compile-reserve-s",
        type=float,
        default=0.0,
        help="least time left to try the compiled pass (default 150 s on CUDA, 600 s on a CPU)",
    )
    # max-autotune (Kiln's default) takes many minutes per shape: the kit compiles in the default mode.
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument(
        "--run", choices=sorted(RUNS), default=os.environ.get("RUN", "all"), help="which measurements (RunPlan)"
    )
    parser.add_argument("--no-stock", action="store_true", help="skip stock diffusers (measured in another run)")
    parser.add_argument(
        "--batch-one-only", nargs="*", default=[], help="models timed eager at batch 1 only (no other phase)"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated phases to leave out, per model or once (RunPlan, RUNS)"
    )
    parser.add_argument(
        "--best-batch", default="", help="model=N,...: the batch compiled and fast passes run besides 1"
    )
    parser.add_argument(
        "--compile-modes",
        default=",".join(fastpath.COMPILE_MODES),
        help="comma-separated torch.compile modes measured against eager; cudagraphs: graphs without Inductor",
    )
    parser.add_argument("--compile-backend", default="inductor", help="eager: trace only (the CPU dry run)")
    parser.add_argument("--compile-cache-in", default=None, help="load compile artifacts from this folder first")
    parser.add_argument("--compile-cache-out", default=None, help="save compile artifacts into this folder at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    on_cuda = resolve_device(os.environ.get("KILN_DEVICE", "auto")).type == "cuda"
    args.batch_sizes = [int(b) for b in (args.batch_sizes or ("1,2,4,8" if on_cuda else "1,2")).split(",")]
    args.repeats = args.repeats or (2 if on_cuda else 1)
    args.jobs = args.jobs or (6 if on_cuda else 3)
    args.compile_modes = [mode for mode in args.compile_modes.split(",") if mode]
    args.skip = {phase for phase in args.skip.split(",") if phase}
    args.best_batch = {
        model: int(batch) for model, _, batch in (item.partition("=") for item in args.best_batch.split(",") if item)
    }
    kit = Kit(args, Budget(args.budget_s, started))
    kit.run()
    print(render_markdown(kit.report.data), flush=True)
    return 1 if kit.report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
