"""The GPU truth kit on the CPU with the tiny profile: the same entry point the GPU host runs, so it cannot
rot between GPU runs. Its numbers here say nothing about a GPU; the tests check the report's shape,
units and arithmetic, the budget, and that the kit imports nothing the host lacks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools.gpu_kit import pack, truth

ROOT = Path(__file__).resolve().parents[2]
MODEL_FIELDS = {"workload", "kiln", "stock", "ratio_kiln_over_stock", "idle"}


def run_kit(out: Path, weights_dir: Path, *args: str) -> dict:
    env = os.environ | {"KILN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.gpu_kit",
            "--out",
            str(out),
            "--profile",
            "tiny",
            "--weights-dir",
            str(weights_dir),
            *args,
        ],
        cwd=ROOT,
        env=env,
        check=False,
        timeout=600,
        capture_output=True,
    )
    return json.loads((out / "gpu-truth.json").read_text())


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny weights, built by the first run and loaded by the next."""
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("kit")
    data = run_kit(
        out,
        weights,
        *("--budget-s", "1500", "--compile-reserve-s", "100000", "--skip", "compile_modes,fast"),
    )
    return data, (out / "gpu-truth.md").read_text()


@pytest.fixture(scope="module")
def run_b(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> dict:
    """Run B's measurements on the XL depth model (no stock): compiled (tracing only) against eager, the
    fast mode (SD2's, which has no ControlNet, is tested in test_fast_mode)."""
    out = tmp_path_factory.mktemp("kit-b")
    cache = tmp_path_factory.mktemp("compile-cache")
    return run_kit(
        out,
        weights,
        *("--run", "B", "--budget-s", "1500", "--no-stock", "--batch-sizes", "1,3"),
        *("--best-batch", "kiln/ip-adapter-depth-xl=2"),
        *("--models", "kiln/ip-adapter-depth-xl"),
        *("--compile-modes", "reduce-overhead", "--compile-backend", "eager"),
        *("--compile-cache-in", str(cache), "--compile-cache-out", str(cache)),
    )


def test_the_kit_measures_every_model_stock_against_kiln(report: tuple[dict, str]) -> None:
    data, _ = report
    assert data["errors"] == [] and data["complete"] is True
    assert data["kit_version"] == truth.KIT_VERSION
    assert data["device"]["kind"] == "cpu" and "NOT GPU numbers" in data["device"]["name"]
    assert {"torch", "cuda", "diffusers", "transformers", "kiln_commit"} <= set(data["versions"])
    assert data["weights"]["profile"] == "tiny"
    assert data["units"]["seconds_per_image"] == "s" and data["units"]["peak_gib"] == "GiB"
    assert list(data["models"]) == list(truth.MODELS)
    for model in data["models"].values():
        assert set(model) >= MODEL_FIELDS
        assert model["workload"] == {"width": 64, "height": 64, "steps": 4, "label": "64², 4 steps"}
        stock, kiln = model["stock"], model["kiln"]
        for measured in (stock, *kiln["batches"].values()):
            assert measured["seconds_per_image"] > 0 and measured["peak_gib"] > 0
            assert measured["images_per_minute"] == pytest.approx(60 / measured["seconds_per_image"], rel=0.01)
        assert set(kiln["batches"]) == {"1", "2"}
        assert kiln["batches"]["2"]["batch"] == 2
        assert model["ratio_kiln_over_stock"] == pytest.approx(
            kiln["batches"]["1"]["seconds_per_image"] / stock["seconds_per_image"], rel=0.01
        )
        best = kiln["batches"][str(kiln["best_batch"])]["seconds_per_image"]
        assert best == min(batch["seconds_per_image"] for batch in kiln["batches"].values())
        assert kiln["setup_s"] > 0 and kiln["prepare_s"] > 0
        for overlap in ("overlap_off", "overlap_on"):
            assert 0 <= model["idle"][overlap]["idle_share"] < 1
        assert model["idle"]["overlap_on"]["max_batch_size"] == kiln["best_batch"]
    assert data["compile"] is None
    skipped = [item["what"] for item in data["skipped"]]
    assert skipped == [f"{m} {phase}" for phase in ("compile_modes", "fast") for m in truth.MODELS] + ["compiled pass"]


def test_the_kit_counts_no_recompile_for_new_scale_values(report: tuple[dict, str]) -> None:
    data, markdown = report
    recompiles = data["recompiles"]
    assert recompiles["model"] == "kiln/ip-adapter-depth-xl" and recompiles["backend"] == "eager"
    assert recompiles["first_call_graphs"] > 0  # the pass really was compiled
    assert set(recompiles["inputs"]) == {"ip_adapter_scale", "controlnet_scale", "ip_adapter_mode"}
    for entry in recompiles["inputs"].values():
        assert len(entry["values"]) == 3
        assert entry["new_graphs"] == 0 and entry["eager_fallbacks"] == 0, recompiles
    assert "Recompiles (kiln/ip-adapter-depth-xl" in markdown


def test_the_markdown_report_has_a_row_per_model_and_says_what_it_measured_on(report: tuple[dict, str]) -> None:
    data, markdown = report
    assert markdown.startswith(f"# GPU truth: {data['device']['name']}")
    assert "**tiny**" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| kiln/")]
    assert [row.split(" | ")[0].removeprefix("| ") for row in rows] == list(truth.MODELS)
    for row, model in zip(rows, data["models"].values(), strict=True):
        assert f"{model['ratio_kiln_over_stock']:.2f}" in row


def test_a_budget_too_small_skips_measurements_and_still_writes_the_report(tmp_path: Path) -> None:
    data = run_kit(tmp_path / "out", tmp_path / "weights", "--budget-s", "1")
    assert data["complete"] is True and data["errors"] == []
    skipped = [item["what"] for item in data["skipped"]]
    assert skipped == [f"{model} batch 1" for model in truth.MODELS] + ["compiled pass", "recompiles"]
    assert all("stock" not in model and "kiln" not in model for model in data["models"].values())
    assert (tmp_path / "out" / "gpu-truth.md").exists()


def test_the_kit_imports_only_what_the_host_has_or_the_kit_carries(report: tuple[dict, str]) -> None:
    data, _ = report
    foreign = data["foreign_imports"]
    assert foreign == [], f"imported by Kiln or a carried package, on neither list: {foreign}"


def test_the_package_lists_name_installed_or_pinned_distributions_and_the_kit_avoids_the_heavy_ones() -> None:
    kit = {pack.canonical(name) for name in pack.names(pack.KIT_PACKAGES)}
    host = {pack.canonical(name) for name in pack.names(pack.HOST_PACKAGES)}
    assert not kit & host, "carrying what the host has would shadow its version"
    assert {"torch", "transformers", "huggingface-hub", "accelerate", "safetensors"} <= host
    assert not kit & {"boto3", "botocore", "fastapi", "uvicorn", "torch"}
    entries = pack.names(pack.KIT_PACKAGES)
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", pack.pinned(entry)) for entry in entries)


def test_run_b_measures_the_compiled_path_against_eager_and_the_fast_mode(run_b: dict) -> None:
    assert run_b["errors"] == [] and run_b["complete"] is True and run_b["run"] == "B"
    assert list(run_b["models"]) == ["kiln/ip-adapter-depth-xl"]
    assert run_b["compile_cache"]["loaded_bytes"] == 0  # nothing saved before; eager tracing saves nothing
    assert run_b["compile_cache"]["key"].endswith(".torch-compile-cache")
    for model in run_b["models"].values():
        assert "stock" not in model and set(model["kiln"]["batches"]) == {"1"}
        compiled = model["compiled"]["reduce-overhead"]
        assert set(compiled["batches"]) == {"1", "2"} and compiled["cache"] == "cold"
        assert all(batch["seconds_per_image"] > 0 and "compile_s" in batch for batch in compiled["batches"].values())
        # Tracing only (eager backend) runs the very same kernels: the same pixels.
        assert compiled["max_abs_diff_vs_eager"] == 0
        fast = model["fast"]
        # fast keeps kiln's shape.
        assert set(fast["batches"]) == {"1", "2"} and fast["best_batch"] in (1, 2)
        assert model["ratio_fast_over_kiln"] == pytest.approx(
            fast["batches"]["1"]["seconds_per_image"] / model["kiln"]["batches"]["1"]["seconds_per_image"], rel=0.01
        )
        expected = {"controlnet_cond_only", "feature_reuse", "float8", "all"}
        assert set(fast["variants"]) == expected
        assert fast["variants"]["float8"] == {"skipped": "float8 needs CUDA, the device is cpu"}
        assert fast["components"] == sorted(expected - {"float8", "all"})
        for name in expected - {"float8"}:
            # Each component changes the latents, by less than they measure.
            assert 0 < fast["variants"][name]["rel_l2_latents_vs_quality"] < 2
    recompiles = run_b["models"]["kiln/ip-adapter-depth-xl"]["compiled"]["reduce-overhead"]["recompiles"]
    assert set(recompiles) == {"ip_adapter_scale", "controlnet_scale", "ip_adapter_mode"}
    assert all(entry["new_graphs"] == 0 and entry["eager_fallbacks"] == 0 for entry in recompiles.values())


def test_a_pinned_entry_travels_at_its_pin_without_being_installed_here() -> None:
    assert "torchao==0.18.0" in pack.names(pack.KIT_PACKAGES)
    assert pack.canonical("torchao==0.18.0") == "torchao" and pack.version("torchao==0.18.0") == "0.18.0"
    assert pack.pinned("torchao==0.18.0") == "torchao==0.18.0"
