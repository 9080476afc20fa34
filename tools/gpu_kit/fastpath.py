"""The kit's fast-path measurements: compiled modes against eager, the compile cache, the fast mode.

Per model, after Kiln's eager batch 1 (and best batch) are measured:

- **compiled** (``measure_compile_modes``): Kiln with ``KILN_TORCH_COMPILE`` in each of
  ``--compile-modes`` (``reduce-overhead``: Inductor with CUDA graphs; ``max-autotune-no-cudagraphs``:
  autotuned kernels, no graphs; ``cudagraphs``, on request: graphs of the eager kernels, no Inductor) at batch 1
  and the best batch: what the compiled predictor applied,
  compile time (first call minus a timed one), seconds per image, the max absolute difference of the
  final image (0-255) against eager at the same seeds, and on the XL models the graphs dynamo adds
  over three values of each scale input;
- **where the time goes** (``measure_profile``, and each compiled mode at batch 1): one call profiled,
  summarised per denoising step (``step_profile``): host, UNet, ControlNet, the loop's other kernels,
  GPU idle, then the VAE decode and the rest of the call;
- **fast** (``measure_fast``): the fast mode, each component alone and all together, at batch 1 (all
  together also at the best batch), with the relative L2 difference of the final latents against the
  quality path at the same seeds (random weights give noise images: latents say more than pixels);
- **compiled fast** (``measure_compiled_fast``): the fast mode on a compiled predictor (the first compiled
  mode), every component together, at batch 1 and the best batch, with the graphs a repeated call adds.

The compile cache (``worker.compile_cache``): with ``--compile-cache-in`` the kit loads the artifacts
before anything compiles (run B: compile times are then warm-cache ones); with ``--compile-cache-out``
it saves them after the compiled measurements (run A), and reports the sizes.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch._dynamo.utils import counters as dynamo_counters

from models.kit.fast_mode import FastComponent, FastMode, device_capability, float8_supported
from models.kit.tuning import _compiled_modules
from models.registry import find_model
from shared.inputs.schema import Speed
from tests.support.fakes import FakeContext
from tools.gpu_kit import step_profile
from worker import compile_cache
from worker.predictor_pool import PredictorPool

if TYPE_CHECKING:
    from tools.gpu_kit.truth import Kit


def throughput(seconds_per_call: float, batch: int) -> dict[str, float]:
    per_image = seconds_per_call / batch
    return {"seconds_per_image": round(per_image, 4), "images_per_minute": round(60 / per_image, 2)}


COMPILE_MODES = ("reduce-overhead", "max-autotune-no-cudagraphs")
# A further mode the kit knows: CUDA graphs captured from the eager kernels, no Inductor (dynamo's
# ``cudagraphs`` backend, what a worker runs with ``KILN_COMPILE_BACKEND=cudagraphs``). It compiles in a
# fraction of Inductor's time; measured beside ``reduce-overhead`` it says what the graphs alone give.
CAPTURE_ONLY = "cudagraphs"
# What one compiled mode needs at least, on top of its timed calls (compile time is unknown until run once).
MODE_RESERVE_S = {"cuda": 120.0, "cpu": 20.0}
# Each input moved on its own from the workload, on the compiled path: no new graph is expected.
SCALE_VALUES: dict[str, tuple[Any, ...]] = {
    "ip_adapter_scale": (0.2, 0.5, 0.8),
    "controlnet_scale": (0.3, 0.9, 1.5),
    "ip_adapter_mode": ("full", "style", "composition"),
}
SCALE_STEPS = 2
# The models that take every input of SCALE_VALUES.
SCALE_MODELS = ("kiln/ip-adapter-depth-xl", "kiln/ip-adapter-openpose-xl")
# What a profiled call needs besides its two calls (the profiler's start and the trace's summary).
PROFILE_RESERVE_S = {"cuda": 20.0, "cpu": 5.0}
ALL = "all"


def generate(predictor: Any, jobs: list[Any]) -> tuple[list[np.ndarray], torch.Tensor]:
    """One ``generate`` over ``jobs``: the first output image of each job, and the final latents."""
    final: list[torch.Tensor] = []
    step_callback = FakeContext().step_callback()

    def keeping_latents(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        final[:] = [kwargs["latents"].detach().float().cpu()]
        return step_callback(pipe, step, timestep, kwargs)

    outputs = predictor.generate(jobs, keeping_latents)
    return [np.asarray(images[0], dtype=np.int16) for images in outputs], final[0]


def max_abs_difference(images: list[np.ndarray], reference: list[np.ndarray]) -> int:
    return max(int(np.abs(a - b).max()) for a, b in zip(images, reference, strict=True))


def relative_l2(latents: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(latents - reference) / torch.linalg.vector_norm(reference))


def best_batch(kit: Kit, model: str) -> int:
    """The batch the compiled and fast passes run besides 1: ``--best-batch``'s for the model, else eager
    Kiln's best, else the largest of ``--batch-sizes``."""
    if model in kit.args.best_batch:
        return kit.args.best_batch[model]
    kiln = kit.report.model(model).get("kiln", {})
    return int(kiln.get("best_batch") or max(kit.args.batch_sizes))


def cache_key(kit: Kit) -> compile_cache.CacheKey:
    """The kit's compile cache key: the same arguments in runs A and B give the same key (models timed at batch
    1 only are never compiled, so run B's extra eager model leaves it as run A's)."""
    compiled = [model for model in kit.args.models if model not in kit.args.batch_one_only]
    sides = {kit.workload(model).side for model in compiled}
    return compile_cache.cache_key(
        kit.device,
        compiled,
        [(side, side) for side in sides],
        kit.args.batch_sizes,
        kit.args.compile_backend,
        "+".join(kit.args.compile_modes),
    )


def load_compile_cache(kit: Kit) -> None:
    if kit.args.compile_cache_in:
        directory = Path(kit.args.compile_cache_in)
        loaded = compile_cache.load(directory, cache_key(kit))
        kit.report.data["compile_cache"] = {"loaded_from": str(directory), "loaded_bytes": loaded}


def save_compile_cache(kit: Kit) -> None:
    if kit.args.compile_cache_out:
        directory = Path(kit.args.compile_cache_out)
        saved = compile_cache.save(directory, cache_key(kit))
        entry = kit.report.data.setdefault("compile_cache", {})
        entry |= {"saved_to": str(directory), "saved_bytes": saved, "key": cache_key(kit).name}


# -- compiled modes --------------------------------------------------------------------------------


def measure_compile_modes(kit: Kit, model: str) -> None:
    kiln = kit.report.model(model).get("kiln", {})
    one = kiln.get("batches", {}).get("1")
    if one is None:
        return
    batches = sorted({1, best_batch(kit, model)})
    eager_images, _ = generate(kit.predictor(model), kit.prepared(model, 1))
    warm = bool(kit.report.data.get("compile_cache", {}).get("loaded_bytes"))
    for mode in kit.args.compile_modes:
        calls = sum(batch * (1 + kit.args.sweep_repeats) for batch in batches)
        estimate = MODE_RESERVE_S[kit.kind] + calls * one["seconds_per_image"]
        estimate += profile_estimate_s(kit, model, one["seconds_per_image"])
        if not kit.budget.allows(estimate):
            kit.report.skip(f"{model} compiled {mode}", f"needs ~{estimate:.0f} s, {kit.seconds_left():.0f} s left")
            return
        with kit.step(f"{model} compiled {mode}"):
            measure = functools.partial(measure_compile_mode, kit, model, mode, batches, eager_images)
            entry = with_graph_break_fallback(releasing(kit, measure))
            entry["cache"] = "warm" if warm else "cold"
            kit.report.model(model).setdefault("compiled", {})[mode] = entry
            print(f"{model}: compiled {mode}: {entry}", flush=True)


def with_graph_break_fallback(measure: Callable[[bool], dict[str, Any]]) -> dict[str, Any]:
    """``measure(fullgraph=True)``; where a graph break fails it, measured again with the modules compiled in
    pieces (``KILN_COMPILE_FULLGRAPH=false``) and the break reported, so one break does not cost the run."""
    try:
        return measure(True)
    except torch._dynamo.exc.Unsupported as exc:
        # Measured again once the failed attempt's traceback (which holds its predictor) is let go.
        error = f"{type(exc).__name__}: {exc}"[:2000]
    entry = measure(False)
    entry["fullgraph_error"] = error
    return entry


def releasing(kit: Kit, measure: Callable[[bool], dict[str, Any]]) -> Callable[[bool], dict[str, Any]]:
    """``measure``, with what each attempt's compiled predictor held freed once it returns or fails."""

    def attempt(fullgraph: bool) -> dict[str, Any]:
        try:
            return measure(fullgraph)
        finally:
            release_memory(kit)

    return attempt


def release_memory(kit: Kit) -> None:
    """Free what a compiled predictor held (its pool is gone once ``measure_compile_mode`` returns)."""
    gc.collect()
    if kit.on_cuda:
        torch.cuda.empty_cache()


def compiled_predictor(kit: Kit, model: str, mode: str, fullgraph: bool) -> tuple[Any, dict[str, Any]]:
    """A fresh predictor of ``model`` with ``KILN_TORCH_COMPILE`` in ``mode`` (no warm-up: the kit times the
    first call), in a pool of its own, after dynamo forgot every earlier graph; and the head of its entry."""
    torch._dynamo.reset()
    _compiled_modules.clear()
    backend = backend_for(kit, mode)
    settings = kit.settings.model_copy(
        update={
            "torch_compile": True,
            "compile_mode": mode,
            "compile_backend": backend,
            "compile_fullgraph": fullgraph,
            "compile_warmup": False,
        }
    )
    predictor = PredictorPool(settings).get(find_model(model))
    entry = {
        "mode": mode,
        "backend": backend,
        "fullgraph": fullgraph,
        "applied": getattr(predictor, "applied", None),
    }
    return predictor, entry


def backend_for(kit: Kit, mode: str) -> str:
    """The compile backend of ``mode``: ``--compile-backend`` (Inductor, or the CPU dry run's ``eager``), except
    that ``cudagraphs`` on Inductor's place means dynamo's ``cudagraphs`` backend."""
    if mode == CAPTURE_ONLY and kit.args.compile_backend == "inductor":
        return CAPTURE_ONLY
    return kit.args.compile_backend


def timed_batches(kit: Kit, predictor: Any, jobs_at: Callable[[int], list[Any]], batches: list[int]) -> dict[str, Any]:
    """Per batch size: seconds per image and compile time (the first call less a timed one)."""
    timed: dict[str, Any] = {}
    for batch in batches:
        jobs = jobs_at(batch)
        first, mean = kit.timed(lambda jobs=jobs: predictor.generate(jobs, FakeContext().step_callback()))
        timed[str(batch)] = {"batch": batch, **throughput(mean, batch), "compile_s": round(first - mean, 2)}
    return timed


def measure_compile_mode(
    kit: Kit, model: str, mode: str, batches: list[int], eager_images: list[np.ndarray], fullgraph: bool = True
) -> dict[str, Any]:
    predictor, entry = compiled_predictor(kit, model, mode, fullgraph)
    try:
        entry["batches"] = timed_batches(kit, predictor, lambda batch: kit.prepared(model, batch), batches)
        images, _ = generate(predictor, kit.prepared(model, 1))
        entry["max_abs_diff_vs_eager"] = max_abs_difference(images, eager_images)
        with kit.step(f"{model} compiled {mode} profile"):
            entry["profile"] = profile(kit, model, predictor)
        if model in SCALE_MODELS:
            entry["recompiles"] = scale_recompiles(kit, model, predictor)[1]
    finally:
        _compiled_modules.clear()
    entry["best_batch"] = best_of(entry["batches"])
    return entry


def best_of(batches: dict[str, Any]) -> int:
    return int(min(batches.values(), key=lambda b: b["seconds_per_image"])["batch"])


def scale_recompiles(kit: Kit, model: str, predictor: Any) -> tuple[int, dict[str, Any]]:
    """The graphs of a first call, then the graphs dynamo adds (and frames it gives up on) over three
    values of each scale input."""
    spec = find_model(model)
    job = kit.prepare_job(predictor, model, num_inference_steps=SCALE_STEPS)

    def run_with(**change: Any) -> None:
        inputs = spec.input_model(**job.inputs.model_dump() | change)
        predictor.generate([replace(job, inputs=inputs)], FakeContext().step_callback())

    def graphs_and_fallbacks() -> tuple[int, int]:
        frames = dynamo_counters["frames"]
        return dynamo_counters["stats"]["unique_graphs"], frames["total"] - frames["ok"]

    before = graphs_and_fallbacks()
    run_with()
    first_call_graphs = graphs_and_fallbacks()[0] - before[0]
    counts: dict[str, Any] = {}
    for name, values in SCALE_VALUES.items():
        start = graphs_and_fallbacks()
        for value in values:
            run_with(**{name: value})
        end = graphs_and_fallbacks()
        counts[name] = {"values": list(values), "new_graphs": end[0] - start[0], "eager_fallbacks": end[1] - start[1]}
    return first_call_graphs, counts


# -- where the time goes --------------------------------------------------------------------------


def profile_estimate_s(kit: Kit, model: str, seconds_per_image: float) -> float:
    """A profiled call's cost: a warm-up and the call (slowed down by the profiler) at fewer steps."""
    work = kit.workload(model)
    return (
        PROFILE_RESERVE_S[kit.kind] + 4 * seconds_per_image * min(step_profile.PROFILE_STEPS, work.steps) / work.steps
    )


def profile(kit: Kit, model: str, predictor: Any) -> dict[str, Any]:
    """``predictor``'s call at batch 1, profiled and summarised per step (``step_profile``)."""
    steps = min(step_profile.PROFILE_STEPS, kit.workload(model).steps)
    job = kit.prepare_job(predictor, model, num_inference_steps=steps)

    def call() -> None:
        predictor.generate([job], FakeContext().step_callback())

    return step_profile.profile_call(predictor.pipe, call, kit.device, steps, batch=1)


def measure_profile(kit: Kit, model: str) -> None:
    """Eager Kiln's call profiled (the compiled modes profile theirs in ``measure_compile_mode``)."""
    one = kit.report.model(model).get("kiln", {}).get("batches", {}).get("1")
    if one is None:
        return
    estimate = profile_estimate_s(kit, model, one["seconds_per_image"])
    if not kit.budget.allows(estimate):
        kit.report.skip(f"{model} profile", f"needs ~{estimate:.0f} s, {kit.seconds_left():.0f} s left")
        return
    with kit.step(f"{model} profile"):
        kit.report.model(model)["profile"] = profile(kit, model, kit.predictor(model))
        print(f"{model}: profile: {kit.report.model(model)['profile']}", flush=True)


# -- the fast mode ---------------------------------------------------------------------------------


def fast_variants(model: str) -> dict[str, frozenset[FastComponent]]:
    """Each component alone (the ControlNet one only where there is a ControlNet), then all together."""
    components = [c for c in FastComponent if model != "kiln/sd2-depth2img" or c != FastComponent.CONTROLNET_COND_ONLY]
    return {c.value: frozenset({c}) for c in components} | {ALL: frozenset(components)}


def fast_jobs(jobs: list[Any]) -> list[Any]:
    return [replace(job, inputs=job.inputs.model_copy(update={"speed": Speed.FAST})) for job in jobs]


def measure_fast(kit: Kit, model: str) -> None:
    kiln = kit.report.model(model).get("kiln", {})
    one = kiln.get("batches", {}).get("1")
    if one is None:
        return
    best = best_batch(kit, model)
    variants = fast_variants(model)
    calls = len(variants) * (2 + kit.args.repeats) + best * (1 + kit.args.sweep_repeats)
    estimate = calls * one["seconds_per_image"]
    if not kit.budget.allows(estimate):
        kit.report.skip(f"{model} fast mode", f"needs ~{estimate:.0f} s, {kit.seconds_left():.0f} s left")
        return
    predictor = kit.predictor(model)
    saved = predictor.fast
    interval = kit.settings.fast_reuse_interval
    fast: dict[str, Any] = {"batches": {}, "reuse_interval": interval, "variants": {}}
    kit.report.model(model)["fast"] = fast
    # Each variant is a step of its own: one that fails (float8 on an unforeseen layer) leaves the others.
    try:
        _, quality = generate(predictor, kit.prepared(model, 1))
        float8: dict[str, torch.nn.Module] = {}
        with kit.step(f"{model} fast float8 copies"):
            float8 = float8_modules(kit, predictor, fast)
        if not float8:
            variants[ALL] -= {FastComponent.FLOAT8}
        for name, components in variants.items():
            if FastComponent.FLOAT8 in components and not float8:
                fast["variants"][name] = {"skipped": fast.get("float8", "float8 copies failed")}
                continue
            with kit.step(f"{model} fast {name}"):
                predictor.fast = FastMode(components, interval, float8)
                fast["variants"][name] = measure_fast_variant(kit, model, predictor, quality, one)
                print(f"{model}: fast {name}: {fast['variants'][name]}", flush=True)
        with kit.step(f"{model} fast batches"):
            predictor.fast = FastMode(variants[ALL], interval, float8)
            measure_fast_batches(kit, model, predictor, fast, best)
    finally:
        predictor.fast = saved


def measure_fast_variant(
    kit: Kit, model: str, predictor: Any, quality: torch.Tensor, one: dict[str, Any]
) -> dict[str, Any]:
    """The predictor's fast mode at batch 1: speed, and how far its final latents are from quality's."""
    jobs = fast_jobs(kit.prepared(model, 1))
    _, latents = generate(predictor, jobs)
    _, mean = kit.timed(lambda: predictor.generate(jobs, FakeContext().step_callback()))
    return {
        "components": sorted(c.value for c in predictor.fast.components),
        **throughput(mean, 1),
        "rel_l2_latents_vs_quality": round(relative_l2(latents, quality), 5),
        "ratio_over_kiln": round(mean / one["seconds_per_image"], 3),
    }


def float8_modules(kit: Kit, predictor: Any, fast: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """The float8 copies of the predictor's UNet and ControlNet, or none (and why) where float8 cannot run."""
    supported, why = float8_supported(kit.device, device_capability(kit.device))
    fast["float8"] = why
    if not supported:
        return {}
    probe = FastMode(frozenset({FastComponent.FLOAT8}), kit.settings.fast_reuse_interval)
    probe.prepare_float8(predictor.pipe, kit.device, device_capability(kit.device))
    return probe.float8_modules


def measure_fast_batches(kit: Kit, model: str, predictor: Any, fast: dict[str, Any], best: int) -> None:
    """The predictor's fast mode (every component that runs here) at batch 1 and the best batch: ``fast``
    in ``kiln``'s shape, and the ratio fast / Kiln at batch 1."""
    fast["components"] = sorted(c.value for c in predictor.fast.components)
    for batch in sorted({1, best}):
        jobs = fast_jobs(kit.prepared(model, batch))
        first, mean = kit.timed(lambda jobs=jobs: predictor.generate(jobs, FakeContext().step_callback()))
        fast["batches"][str(batch)] = {"batch": batch, **throughput(mean, batch), "first_call_s": round(first, 3)}
    fast["best_batch"] = best_of(fast["batches"])
    kiln_one = kit.report.model(model)["kiln"]["batches"]["1"]["seconds_per_image"]
    kit.report.model(model)["ratio_fast_over_kiln"] = round(fast["batches"]["1"]["seconds_per_image"] / kiln_one, 3)


def measure_compiled_fast(kit: Kit, model: str) -> None:
    """The fast mode on a compiled predictor (the first of ``--compile-modes``) with every component the
    settings name that runs here, at batch 1 and the best batch: ``fast.compiled``, in ``kiln``'s shape."""
    one = kit.report.model(model).get("kiln", {}).get("batches", {}).get("1")
    if one is None or not kit.args.compile_modes:
        return
    mode = kit.args.compile_modes[0]
    batches = sorted({1, best_batch(kit, model)})
    calls = sum(batch * (2 + kit.args.sweep_repeats) for batch in batches)
    # Graphs of its own: the float8 modules, the reusing steps' UNet, the ControlNet on half the rows.
    estimate = 2 * MODE_RESERVE_S[kit.kind] + calls * one["seconds_per_image"]
    if not kit.budget.allows(estimate):
        kit.report.skip(f"{model} compiled fast", f"needs ~{estimate:.0f} s, {kit.seconds_left():.0f} s left")
        return
    _, quality = generate(kit.predictor(model), kit.prepared(model, 1))
    with kit.step(f"{model} compiled fast {mode}"):
        measure = functools.partial(measure_compiled_fast_mode, kit, model, mode, batches, quality)
        entry = with_graph_break_fallback(releasing(kit, measure))
        kit.report.model(model).setdefault("fast", {})["compiled"] = entry
        print(f"{model}: compiled fast {mode}: {entry}", flush=True)


def measure_compiled_fast_mode(
    kit: Kit, model: str, mode: str, batches: list[int], quality: torch.Tensor, fullgraph: bool = True
) -> dict[str, Any]:
    """One compiled predictor's fast calls: per batch size, seconds per image and compile time; then the graphs
    a repeated call adds (0: quality, refresh and reuse steps each keep theirs) and the relative L2 of its final
    latents against eager quality's at the same seed."""
    predictor, entry = compiled_predictor(kit, model, mode, fullgraph)
    entry["components"] = sorted(c.value for c in predictor.fast.components)
    entry["float8_modules"] = sorted(predictor.fast.float8_modules)
    try:
        entry["batches"] = timed_batches(kit, predictor, lambda batch: fast_jobs(kit.prepared(model, batch)), batches)
        graphs = dynamo_counters["stats"]["unique_graphs"]
        _, latents = generate(predictor, fast_jobs(kit.prepared(model, 1)))
        entry["new_graphs_on_repeat"] = dynamo_counters["stats"]["unique_graphs"] - graphs
        entry["rel_l2_latents_vs_quality"] = round(relative_l2(latents, quality), 5)
    finally:
        _compiled_modules.clear()
    entry["best_batch"] = best_of(entry["batches"])
    return entry


# -- the report ------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _recompiled(entry: dict[str, Any]) -> str:
    counts = entry.get("recompiles")
    if not counts:
        return "–"
    return str(sum(item["new_graphs"] + item["eager_fallbacks"] for item in counts.values()))


def markdown(data: dict[str, Any]) -> list[str]:
    """The compiled and fast-mode tables of the Markdown report (nothing when neither was measured)."""
    lines: list[str] = []
    compiled = [
        (ref, mode, entry) for ref, m in data["models"].items() for mode, entry in m.get("compiled", {}).items()
    ]
    if compiled:
        lines += [
            "",
            "Compiled Kiln (quality) against eager: compile s = first call minus a timed one (cache: warm when "
            "run A's artifacts were loaded); max |Δ| = largest pixel difference (0-255) of the final image; "
            "new graphs = those added over 3 values of each scale input.",
            "",
            "| model | mode | cache | s/img @1 | compile s @1 | best batch | s/img @best | compile s @best | "
            "max abs Δ vs eager | new graphs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for ref, mode, entry in compiled:
            one, best = entry["batches"].get("1", {}), entry["batches"].get(str(entry.get("best_batch")), {})
            shown = mode if entry.get("fullgraph", True) else f"{mode} (graph breaks: see fullgraph_error)"
            lines.append(
                f"| {ref} | {shown} | {entry.get('cache', '–')} | {_number(one.get('seconds_per_image'))} "
                f"| {_number(one.get('compile_s'), 1)} | {_number(entry.get('best_batch'))} "
                f"| {_number(best.get('seconds_per_image'))} | {_number(best.get('compile_s'), 1)} "
                f"| {_number(entry.get('max_abs_diff_vs_eager'))} | {_recompiled(entry)} |"
            )
    fast = [(ref, m["fast"]) for ref, m in data["models"].items() if m.get("fast", {}).get("variants")]
    if fast:
        lines += [
            "",
            "Fast mode against Kiln quality (eager), batch 1: relative L2 of the final latents at the same seed.",
            "",
            "| model | variant | s/img @1 | fast / Kiln | rel. L2 latents |",
            "|---|---|---|---|---|",
        ]
        for ref, entry in fast:
            for name, variant in entry["variants"].items():
                if "skipped" in variant:
                    lines.append(f"| {ref} | {name} | skipped: {variant['skipped']} | – | – |")
                    continue
                lines.append(
                    f"| {ref} | {name} | {_number(variant['seconds_per_image'])} "
                    f"| {_number(variant['ratio_over_kiln'], 2)} | {_number(variant['rel_l2_latents_vs_quality'], 4)} |"
                )
    lines += compiled_fast_markdown(data)
    lines += profile_markdown(data)
    cache = data.get("compile_cache")
    if cache:
        lines += [
            "",
            f"Compile cache: loaded {cache.get('loaded_bytes', 0) / 2**20:.1f} MiB, "
            f"saved {cache.get('saved_bytes', 0) / 2**20:.1f} MiB ({cache.get('key', '–')}).",
        ]
    return lines


def compiled_fast_markdown(data: dict[str, Any]) -> list[str]:
    """The table of the fast mode on a compiled predictor (nothing when it was not measured)."""
    entries = [(ref, m["fast"]["compiled"]) for ref, m in data["models"].items() if "compiled" in m.get("fast", {})]
    if not entries:
        return []
    lines = [
        "",
        "Fast mode (every component) on compiled Kiln: new graphs = those a repeated call added (0 expected); "
        "rel. L2 of the final latents against eager quality at the same seed.",
        "",
        "| model | mode | float8 | s/img @1 | compile s @1 | best batch | s/img @best | new graphs | rel. L2 latents |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for ref, entry in entries:
        one, best = entry["batches"].get("1", {}), entry["batches"].get(str(entry.get("best_batch")), {})
        shown = entry["mode"] if entry.get("fullgraph", True) else f"{entry['mode']} (graph breaks)"
        lines.append(
            f"| {ref} | {shown} | {', '.join(entry.get('float8_modules', [])) or 'no'} "
            f"| {_number(one.get('seconds_per_image'))} | {_number(one.get('compile_s'), 1)} "
            f"| {_number(entry.get('best_batch'))} | {_number(best.get('seconds_per_image'))} "
            f"| {_number(entry.get('new_graphs_on_repeat'))} | {_number(entry.get('rel_l2_latents_vs_quality'), 4)} |"
        )
    return lines


def profile_markdown(data: dict[str, Any]) -> list[str]:
    """The table of where the profiled calls' time went (nothing when no call was profiled)."""
    profiled = [(ref, "eager", m["profile"]) for ref, m in data["models"].items() if "profile" in m]
    profiled += [
        (ref, mode, entry["profile"])
        for ref, m in data["models"].items()
        for mode, entry in m.get("compiled", {}).items()
        if "profile" in entry
    ]
    if not profiled:
        return []
    lines = [
        "",
        "Where the time goes: one call at batch 1 profiled (torch.profiler, which slows the host), ms per "
        "denoising step: the loop's wall time on the device's clock, the host's time in it, host / GPU time of "
        "the UNet and ControlNet calls, the loop's other kernels, and GPU idle (the GPU waiting on the host); "
        "then ms per call: VAE decode host / GPU, and the rest of the call (text encoders, set-up, the image).",
        "",
        "| model | path | steps | call s | wall | host | UNet host / GPU | ControlNet host / GPU | other GPU | "
        "GPU idle | VAE decode host / GPU | rest of call | GPU busy | kernels / step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ref, path, entry in profiled:
        step, vae = entry["per_step_ms"], entry["vae_decode_ms"]

        def pair(module: dict[str, Any] | None) -> str:
            return "–" if module is None else f"{_number(module['host'], 2)} / {_number(module['gpu'], 2)}"

        lines.append(
            f"| {ref} | {path} | {entry['steps']} | {_number(entry['call_s'])} | {_number(step['wall'], 2)} "
            f"| {_number(step['host'], 2)} | {pair(step['unet'])} | {pair(step['controlnet'])} "
            f"| {_number(step['other_gpu'], 2)} | {_number(step['gpu_idle'], 2)} | {pair(vae)} "
            f"| {_number(entry['outside_loop_ms']['wall'], 1)} | {_number(entry['gpu_busy_share'], 2)} "
            f"| {_number((entry.get('kernels') or {}).get('per_step'), 1)} |"
        )
    return lines
