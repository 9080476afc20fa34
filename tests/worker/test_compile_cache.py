"""Compile cache artifacts: the key follows everything they depend on; a real Inductor compile on the CPU
saved by one process is loaded by another, whose compile then hits the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worker import compile_cache
from worker.compile_cache import cache_key

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "device": torch.device("cpu"),
    "models": ["kiln/ip-adapter-depth-xl"],
    "shapes": [(1024, 1024)],
    "batch_sizes": [1, 4],
    "compile_backend": "inductor",
    "compile_mode": "max-autotune",
}


def test_the_key_is_the_same_for_the_same_worker_whatever_the_order() -> None:
    reordered = BASE | {"models": ["kiln/ip-adapter-depth-xl"], "batch_sizes": [4, 1, 4]}
    assert cache_key(**BASE) == cache_key(**reordered)
    assert cache_key(**BASE).name.endswith(compile_cache.SUFFIX)


@pytest.mark.parametrize(
    "change",
    [
        {"models": ["kiln/ip-adapter-depth-xl", "kiln/sd2-depth2img"]},
        {"shapes": [(1152, 896)]},
        {"batch_sizes": [1, 8]},
        {"compile_mode": "reduce-overhead"},
        {"compile_backend": "eager"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_key_changes_with_the_models_shapes_and_compile_settings(change: dict) -> None:
    assert cache_key(**BASE).name != cache_key(**(BASE | change)).name


def test_the_key_changes_with_torch_triton_and_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {cache_key(**BASE).name}
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    names.add(cache_key(**BASE).name)
    monkeypatch.setattr(compile_cache, "triton_version", lambda: "0.0.1")
    names.add(cache_key(**BASE).name)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100 80GB HBM3")
    names.add(cache_key(**(BASE | {"device": torch.device("cuda", 0)})).name)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H200")
    names.add(cache_key(**(BASE | {"device": torch.device("cuda", 0)})).name)
    assert len(names) == 5


def test_loading_without_saved_artifacts_loads_nothing(tmp_path: Path) -> None:
    assert compile_cache.load(tmp_path, cache_key(**BASE)) == 0


# Two worker processes in turn, each with its own, empty Inductor cache (only the saved artifacts can
# carry compiled graphs over): each loads the cache, compiles a small model with Inductor, runs it and
# saves the cache. Each is forked afresh from a process that imported torch and its compiler but
# compiled nothing, so the imports are paid once. The model is one Linear: Inductor lowers it to an
# extern matmul, so its graph goes through the FX graph cache (and the artifacts) with no C++ kernel
# to build, and no C compiler probing the CPU's vector instruction sets.
WORKERS = """
import json, os, sys
from multiprocessing import get_context
from pathlib import Path
import torch
import torch._inductor.compile_fx
from torch._dynamo.utils import counters
from worker import compile_cache

def work(directory, inductor_dir):
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_dir
    key = compile_cache.cache_key(torch.device("cpu"), ["tiny"], [(8, 8)], [2], "inductor", "default")
    loaded = compile_cache.load(directory, key)
    torch.manual_seed(0)
    out = torch.compile(torch.nn.Linear(8, 8), backend="inductor", dynamic=False)(torch.ones(2, 8))
    saved = compile_cache.save(directory, key)
    return {"loaded": loaded, "saved": saved, "sum": out.sum().item(),
            "hits": counters["inductor"]["fxgraph_cache_hit"], "pid": os.getpid()}

directory, inductor_dirs = Path(sys.argv[1]), sys.argv[2:]
with get_context("fork").Pool(1, maxtasksperchild=1) as workers:
    print(json.dumps([workers.apply(work, (directory, inductor_dir)) for inductor_dir in inductor_dirs]))
"""


def run_workers(cache_dir: Path, *inductor_dirs: Path) -> list[dict]:
    """What each worker saw, in turn."""
    done = subprocess.run(
        [sys.executable, "-c", WORKERS, str(cache_dir), *map(str, inductor_dirs)],
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_worker_loads_the_first_ones_artifacts_and_hits_them(tmp_path: Path) -> None:
    cache_dir = tmp_path / "kiln-compile-cache"
    cold, warm = run_workers(cache_dir, tmp_path / "inductor-1", tmp_path / "inductor-2")
    assert cold["pid"] != warm["pid"]
    assert cold["loaded"] == 0 and cold["saved"] > 0 and cold["hits"] == 0
    assert warm["loaded"] == cold["saved"] and warm["hits"] >= 1
    assert warm["sum"] == pytest.approx(cold["sum"])
    (artifacts,) = cache_dir.glob(f"*{compile_cache.SUFFIX}")
    assert json.loads(Path(f"{artifacts}.json").read_text())["models"] == ["tiny"]
    assert not list(cache_dir.glob(".partial-*"))
