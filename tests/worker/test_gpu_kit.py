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

from tests.bench.gpu_kit import pack, truth

ROOT = Path(__file__).resolve().parents[2]
MODEL_FIELDS = {"workload", "kiln", "stock", "ratio_kiln_over_stock", "idle"}


def run_kit(out: Path, weights_dir: Path, *args: str) -> dict:
    env = os.environ | {"KILN_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.gpu_kit",
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
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("kit")
    data = run_kit(out, tmp_path_factory.mktemp("weights"), "--budget-s", "1500", "--compile-reserve-s", "100000")
    return data, (out / "gpu-truth.md").read_text()


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
    assert [item["what"] for item in data["skipped"]] == ["compiled pass"]


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


def test_the_package_lists_name_installed_distributions_and_the_kit_avoids_the_heavy_ones() -> None:
    kit = {pack.canonical(name) for name in pack.names(pack.KIT_PACKAGES)}
    host = {pack.canonical(name) for name in pack.names(pack.HOST_PACKAGES)}
    assert not kit & host, "carrying what the host has would shadow its version"
    assert {"torch", "transformers", "huggingface-hub", "accelerate", "safetensors"} <= host
    assert not kit & {"boto3", "botocore", "fastapi", "uvicorn", "torch"}
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", pack.pinned(name)) for name in kit)
