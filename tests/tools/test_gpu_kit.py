"""The GPU truth kit on the CPU with the tiny profile, so it cannot rot between GPU runs.

Two kit runs on SD2 and the XL depth model share the per-model measurements, side by side (two
cores): the command the GPU host runs (``python -m tools.gpu_kit``, in its own process, which records
its imports) with the eager phases of the ``all`` plan (stock, Kiln at batch 1 and 2, the idle share)
and none of its once-per-run ones, and meanwhile, in this process, run B as the GPU session runs it
(Kiln at batch 1, a compiled mode with the compile cache loaded and the recompile counts, the fast
mode). Compiled passes use dynamo's ``eager`` backend: tracing only. Their numbers say nothing about
a GPU; the tests check the report's shape, units and arithmetic, the budget, the printed host
commands, and that the kit imports nothing the host lacks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tools.gpu_kit import fastpath, pack, truth

# The module's fixtures run the kit's two runs on the CPU (compiles included): about 110 s alone, two to
# three times that beside the rest of the suite on a busy 2-core machine; the suite's 300 s was too tight.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
SD2 = "kiln/sd2-depth2img"
XL = "kiln/ip-adapter-depth-xl"
MODELS = [SD2, XL]
WORKLOAD = ("--models", *MODELS, "--steps", "2")
SCALE_INPUTS = {"ip_adapter_scale", "controlnet_scale", "ip_adapter_mode"}
# A compiled predictor snaps sizes to a bucket: this one keeps the workload's 64² (the smallest default is 512²).
KIT_ENV = {"KILN_DEVICE": "cpu", "KILN_SIZE_BUCKETS": "64x64"}


def kit_args(out: Path, weights_dir: Path, *args: str) -> list[str]:
    return ["--out", str(out), "--profile", "tiny", "--weights-dir", str(weights_dir), *args]


def report_of(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu-truth.json").read_text()), (out / "gpu-truth.md").read_text()


def run_in_process(out: Path, weights_dir: Path, *args: str) -> tuple[dict, str]:
    """``truth.main`` in this process: the report's contents, without an interpreter start and imports."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in KIT_ENV.items():
            patch.setenv(name, value)
        truth.main(kit_args(out, weights_dir, *args))
    return report_of(out)


@contextmanager
def one_core() -> Iterator[None]:
    """torch computes on one thread here while the host command, started with one, uses the other core
    (two processes spinning two threads each on two cores slow both down many times)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class HostCommand:
    """The host's command, started and left running."""

    process: subprocess.Popen
    out: Path
    log: Path

    def finished(self) -> tuple[dict, str, str]:
        """(report, Markdown, stdout) once the command has exited."""
        self.process.wait(timeout=600)
        stdout = self.log.read_text()
        assert (self.out / "gpu-truth.json").exists(), stdout[-4000:]
        return *report_of(self.out), stdout


@pytest.fixture(scope="module")
def host_command(tmp_path_factory: pytest.TempPathFactory, weights_dir: Path) -> Iterator[HostCommand]:
    """Starts the host's command on the eager phases of the ``all`` plan, in its own process."""
    out = tmp_path_factory.mktemp("kit")
    skip = ("--skip", "compile_modes,fast,compiled_fast,compiled,recompiles")
    args = kit_args(out, weights_dir, "--budget-s", "1500", *WORKLOAD, "--jobs", "2", *skip)
    log = out.parent / f"{out.name}.log"
    with log.open("w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.gpu_kit", *args],
            cwd=ROOT,
            env=os.environ | KIT_ENV | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
    try:
        yield HostCommand(process, out, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def run_b(host_command: HostCommand, tmp_path_factory: pytest.TempPathFactory, weights_dir: Path) -> tuple[dict, str]:
    """Run B as the GPU session runs it (no stock), in this process once the host command has started:
    compiled at batch 1 and SD2's batch 2 (the compile cache loaded first, saved last), then the fast mode."""
    cache = tmp_path_factory.mktemp("compile-cache")
    args = ("--run", "B", "--no-stock", "--budget-s", "1500", *WORKLOAD, "--best-batch", f"{SD2}=2,{XL}=1")
    compiled = ("--compile-modes", "reduce-overhead", "--compile-backend", "eager")
    cache_args = ("--compile-cache-in", str(cache), "--compile-cache-out", str(cache))
    with one_core():
        return run_in_process(tmp_path_factory.mktemp("kit-b"), weights_dir, *args, *compiled, *cache_args)


@pytest.fixture(scope="module")
def host_run(host_command: HostCommand, run_b: tuple[dict, str]) -> tuple[dict, str, str]:
    """The host command's (report, Markdown, stdout), awaited once run B has run beside it."""
    return host_command.finished()


def check_measured(measured: dict) -> None:
    assert measured["seconds_per_image"] > 0 and measured["peak_gib"] > 0
    assert measured["images_per_minute"] == pytest.approx(60 / measured["seconds_per_image"], rel=0.01)


def check_profile(profile: dict, controlnet: bool) -> None:
    """A profiled call on the CPU: one UNet call per step (and one ControlNet call), one decode, host times only."""
    assert profile["steps"] == 2 and profile["batch"] == 1 and profile["clock"] == "host"
    step = profile["per_step_ms"]
    assert step["unet"]["calls"] == 1 and step["unet"]["host"] > 0 and step["unet"]["gpu"] is None
    assert (step["controlnet"] is not None) == controlnet
    modules = step["unet"]["host"] + (step["controlnet"]["host"] if controlnet else 0)
    # The modules run inside the loop, the loop inside the call.
    assert 0 < modules <= step["host"] <= step["wall"] * 1.01
    assert step["wall"] * profile["steps"] < profile["call_s"] * 1000
    assert profile["vae_decode_ms"]["calls"] == 1 and profile["vae_decode_ms"]["host"] > 0
    assert step["other_gpu"] is None and step["gpu_idle"] is None and profile["gpu_busy_share"] is None
    assert profile["outside_loop_ms"]["wall"] > profile["vae_decode_ms"]["host"]


def test_the_host_command_measures_stock_against_kiln_at_each_batch_and_the_idle_share(
    host_run: tuple[dict, str, str],
) -> None:
    data, _, _ = host_run
    assert data["errors"] == [] and data["complete"] is True and data["run"] == "all"
    assert data["kit_version"] == truth.KIT_VERSION
    assert data["device"]["kind"] == "cpu" and "NOT GPU numbers" in data["device"]["name"]
    assert {"torch", "cuda", "diffusers", "transformers", "kiln_commit"} <= set(data["versions"])
    assert data["weights"]["profile"] == "tiny"
    assert data["units"]["seconds_per_image"] == "s" and data["units"]["peak_gib"] == "GiB"
    assert list(data["models"]) == MODELS
    for model in data["models"].values():
        assert model["workload"] == {"width": 64, "height": 64, "steps": 2, "label": "64², 2 steps"}
        stock, kiln = model["stock"], model["kiln"]
        for measured in (stock, *kiln["batches"].values()):
            check_measured(measured)
        assert set(kiln["batches"]) == {"1", "2"} and kiln["batches"]["2"]["batch"] == 2
        assert model["ratio_kiln_over_stock"] == pytest.approx(
            kiln["batches"]["1"]["seconds_per_image"] / stock["seconds_per_image"], rel=0.01
        )
        best = kiln["batches"][str(kiln["best_batch"])]["seconds_per_image"]
        assert best == min(batch["seconds_per_image"] for batch in kiln["batches"].values())
        assert kiln["setup_s"] > 0 and kiln["prepare_s"] > 0
        assert model["idle"]["jobs"] == 2
        for overlap in ("overlap_off", "overlap_on"):
            assert 0 <= model["idle"][overlap]["idle_share"] < 1
        assert model["idle"]["overlap_on"]["max_batch_size"] == kiln["best_batch"]
    assert data["compile"] is None and data["recompiles"] is None
    for ref, model in data["models"].items():
        check_profile(model["profile"], controlnet=ref == XL)
    per_model = [f"{m} {phase}" for phase in ("compile_modes", "fast", "compiled_fast") for m in MODELS]
    assert [item["what"] for item in data["skipped"]] == [*per_model, "compiled", "recompiles"]


def test_run_b_measures_kiln_at_batch_one_then_the_compiled_path_with_the_cache_loaded(
    run_b: tuple[dict, str],
) -> None:
    data, _ = run_b
    assert data["errors"] == [] and data["complete"] is True and data["run"] == "B"
    assert list(data["models"]) == MODELS
    cache = data["compile_cache"]
    assert cache["loaded_bytes"] == 0  # nothing saved before; eager tracing saves nothing
    assert cache["loaded_from"] == cache["saved_to"] and cache["key"].endswith(".torch-compile-cache")
    for ref, model in data["models"].items():
        assert "stock" not in model and set(model["kiln"]["batches"]) == {"1"}
        check_measured(model["kiln"]["batches"]["1"])
        compiled = model["compiled"]["reduce-overhead"]
        assert compiled["backend"] == "eager" and compiled["cache"] == "cold"
        assert {"unet:compiled(eager)", "vae:decoder_compiled(eager)"} <= set(compiled["applied"])
        check_profile(compiled["profile"], controlnet=ref == XL)
        assert set(compiled["batches"]) == ({"1", "2"} if ref == SD2 else {"1"})
        assert compiled["best_batch"] in (1, 2)
        for batch in compiled["batches"].values():
            assert batch["seconds_per_image"] > 0 and "compile_s" in batch
        # Tracing only (eager backend) runs the very same kernels: the same pixels.
        assert compiled["max_abs_diff_vs_eager"] == 0
    assert "recompiles" not in data["models"][SD2]["compiled"]["reduce-overhead"]  # no per-row scale inputs


def test_a_compiled_mode_traces_the_xl_model_and_counts_no_recompile_for_new_scale_values(
    run_b: tuple[dict, str],
) -> None:
    compiled = run_b[0]["models"][XL]["compiled"]["reduce-overhead"]
    assert {"unet:compiled(eager)", "controlnet:compiled(eager)"} <= set(compiled["applied"])
    recompiles = compiled["recompiles"]
    assert set(recompiles) == SCALE_INPUTS
    for entry in recompiles.values():
        assert len(entry["values"]) == 3
        assert entry["new_graphs"] == 0 and entry["eager_fallbacks"] == 0, recompiles


def test_the_fast_mode_measures_each_component_against_the_quality_path(run_b: tuple[dict, str]) -> None:
    for ref, model in run_b[0]["models"].items():
        components = {"feature_reuse"} | ({"controlnet_cond_only"} if ref == XL else set())  # SD2 has no ControlNet
        fast = model["fast"]
        assert set(fast["variants"]) == components | {"float8", "all"}
        assert fast["variants"]["float8"] == {"skipped": "float8 needs CUDA, the device is cpu"}
        assert fast["components"] == sorted(components)
        for name in components | {"all"}:
            # Each component changes the latents, by less than they measure.
            assert 0 < fast["variants"][name]["rel_l2_latents_vs_quality"] < 2
        # fast keeps kiln's shape, at batch 1 and the best batch.
        assert set(fast["batches"]) == ({"1", "2"} if ref == SD2 else {"1"}) and fast["best_batch"] in (1, 2)
        assert model["ratio_fast_over_kiln"] == pytest.approx(
            fast["batches"]["1"]["seconds_per_image"] / model["kiln"]["batches"]["1"]["seconds_per_image"], rel=0.01
        )


def test_the_fast_mode_on_a_compiled_predictor_keeps_its_graphs_across_calls(run_b: tuple[dict, str]) -> None:
    for ref, model in run_b[0]["models"].items():
        compiled = model["fast"]["compiled"]
        assert compiled["mode"] == "reduce-overhead" and compiled["backend"] == "eager" and compiled["fullgraph"]
        assert "unet:feature_reuse" in compiled["applied"] and compiled["float8_modules"] == []  # no CUDA
        assert set(compiled["batches"]) == ({"1", "2"} if ref == SD2 else {"1"}) and compiled["best_batch"] in (1, 2)
        for batch in compiled["batches"].values():
            assert batch["seconds_per_image"] > 0 and "compile_s" in batch
        # Refresh and reuse steps each traced once: a repeated call adds nothing.
        assert compiled["new_graphs_on_repeat"] == 0
        # Tracing only (eager backend): the latents of the eager fast mode with every component.
        eager = model["fast"]["variants"]["all"]["rel_l2_latents_vs_quality"]
        assert compiled["rel_l2_latents_vs_quality"] == pytest.approx(eager, rel=1e-3) and eager > 0


def model_rows(markdown: str) -> list[str]:
    """The rows of the main table: one per model, with its workload."""
    return [line for line in markdown.splitlines() if line.startswith("| kiln/") and "| 64², 2 steps |" in line]


def test_the_markdown_reports_have_a_row_per_model_and_the_compiled_and_fast_tables(
    host_run: tuple[dict, str, str], run_b: tuple[dict, str]
) -> None:
    for data, markdown in (host_run[:2], run_b):
        assert markdown.startswith(f"# GPU truth: {data['device']['name']}")
        assert "**tiny**" in markdown
        rows = model_rows(markdown)
        assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == MODELS
        for row, model in zip(rows, data["models"].values(), strict=True):
            assert f"| {model['kiln']['batches']['1']['seconds_per_image']:.3f} |" in row
    host, host_markdown, stdout = host_run
    for row, model in zip(model_rows(host_markdown), host["models"].values(), strict=True):
        assert f"| {model['stock']['seconds_per_image']:.3f} |" in row
        assert f"| {model['ratio_kiln_over_stock']:.2f} |" in row
    assert "- skipped recompiles: --skip" in host_markdown
    assert host_markdown in stdout  # the command prints its report last
    _, markdown = run_b
    for ref in MODELS:
        assert f"| {ref} | reduce-overhead | cold |" in markdown and f"| {ref} | feature_reuse |" in markdown
    assert f"| {XL} | controlnet_cond_only |" in markdown
    for ref in MODELS:
        assert f"| {ref} | reduce-overhead | no | " in markdown  # the compiled fast mode, float8 off on a CPU
    assert "Compile cache: loaded 0.0 MiB" in markdown
    for data, markdown, path in ((host_run[0], host_run[1], "eager"), (*run_b, "reduce-overhead")):
        for ref, model in data["models"].items():
            profile = model["profile"] if path == "eager" else model["compiled"][path]["profile"]
            wall = profile["per_step_ms"]["wall"]
            assert f"| {ref} | {path} | 2 | {profile['call_s']:.3f} | {wall:.2f} |" in markdown


def test_a_budget_too_small_skips_measurements_and_still_writes_the_report(tmp_path: Path, weights_dir: Path) -> None:
    data, markdown = run_in_process(tmp_path / "out", weights_dir, "--budget-s", "1")
    assert data["complete"] is True and data["errors"] == []
    skipped = [item["what"] for item in data["skipped"]]
    assert skipped == [f"{model} batch 1" for model in truth.MODELS] + ["compiled pass", "recompiles"]
    assert all("stock" not in model and "kiln" not in model for model in data["models"].values())
    assert markdown.startswith("# GPU truth:")


def test_the_kit_times_instantid_from_a_saved_face_at_batch_one_only(tmp_path: Path, weights_dir: Path) -> None:
    model = truth.INSTANTID
    args = ("--run", "B", "--models", model, "--batch-one-only", model, "--steps", "2", "--budget-s", "600")
    data, markdown = run_in_process(tmp_path / "out", weights_dir, *args)
    assert data["errors"] == [] and data["complete"] is True
    check_measured(data["models"][model]["kiln"]["batches"]["1"])
    skipped = {item["what"]: item["why"] for item in data["skipped"]}
    assert "no InstantID pipeline" in skipped[f"{model} stock"]
    assert skipped[f"{model} compile_modes"] == skipped[f"{model} fast"] == "--batch-one-only"
    assert f"| {model} |" in markdown


def test_the_kit_imports_only_what_the_host_has_or_the_kit_carries(host_run: tuple[dict, str, str]) -> None:
    foreign = host_run[0]["foreign_imports"]
    assert foreign == [], f"imported by Kiln or a carried package, on neither list: {foreign}"


@pytest.mark.parametrize("command", [pack.RUN_A, pack.RUN_B], ids=["run A", "run B"])
def test_the_printed_host_commands_run_the_kit_with_options_it_has(command: str) -> None:
    _, _, kit_options = command.partition(f"{pack.HOST_COMMAND} ")
    args = truth.parse_args(shlex.split(kit_options))
    assert args.run in truth.RUNS and set(args.models) <= set(truth.MODELS)
    assert {item.partition("=")[0] for item in args.best_batch.split(",")} <= set(args.models)


def test_the_package_lists_name_installed_or_pinned_distributions_and_the_kit_avoids_the_heavy_ones() -> None:
    kit = {pack.canonical(name) for name in pack.names(pack.KIT_PACKAGES)}
    host = {pack.canonical(name) for name in pack.names(pack.HOST_PACKAGES)}
    assert not kit & host, "carrying what the host has would shadow its version"
    assert {"torch", "transformers", "huggingface-hub", "accelerate", "safetensors"} <= host
    assert not kit & {"boto3", "botocore", "fastapi", "uvicorn", "torch"}
    entries = pack.names(pack.KIT_PACKAGES)
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", pack.pinned(entry)) for entry in entries)


def test_a_pinned_entry_travels_at_its_pin_without_being_installed_here() -> None:
    assert "torchao==0.18.0" in pack.names(pack.KIT_PACKAGES)
    assert pack.canonical("torchao==0.18.0") == "torchao" and pack.version("torchao==0.18.0") == "0.18.0"
    assert pack.pinned("torchao==0.18.0") == "torchao==0.18.0"


def test_run_b_with_an_eager_only_model_keeps_run_a_compile_cache_key() -> None:
    a, b = (
        truth.parse_args(shlex.split(command.partition(f"{pack.HOST_COMMAND} ")[2]))
        for command in (pack.RUN_A, pack.RUN_B)
    )
    assert truth.INSTANTID in b.models and truth.INSTANTID not in a.models
    keys = [
        fastpath.cache_key(
            SimpleNamespace(args=args, device=torch.device("cpu"), workload=lambda m: truth.workload(m, False))
        ).name
        for args in (a, b)
    ]
    assert keys[0] == keys[1]


def test_the_cudagraphs_mode_runs_dynamos_cudagraphs_backend_only_in_inductors_place() -> None:
    on_gpu, dry_run = (SimpleNamespace(args=SimpleNamespace(compile_backend=b)) for b in ("inductor", "eager"))
    assert fastpath.backend_for(on_gpu, fastpath.CAPTURE_ONLY) == "cudagraphs"
    assert fastpath.backend_for(on_gpu, "reduce-overhead") == "inductor"
    assert fastpath.backend_for(dry_run, fastpath.CAPTURE_ONLY) == "eager"
