"""Compile cache artifacts: the key follows everything they depend on; a real Inductor compile (on the
CPU, with the C compiler) saved by one process is loaded by another, whose compile then hits the cache."""

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


# One worker process: load the cache, compile a small model with Inductor, run it, save the cache.
WORKER = """
import json, sys, time
from pathlib import Path
import torch
from torch._dynamo.utils import counters
from worker import compile_cache

directory = Path(sys.argv[1])
key = compile_cache.cache_key(torch.device("cpu"), ["tiny"], [(8, 8)], [2], "inductor", "default")
loaded = compile_cache.load(directory, key)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
started = time.monotonic()
out = torch.compile(model, backend="inductor", dynamic=False)(torch.ones(2, 8))
seconds = time.monotonic() - started
saved = compile_cache.save(directory, key)
print(json.dumps({"loaded": loaded, "saved": saved, "seconds": seconds, "sum": out.sum().item(),
                  "hits": counters["inductor"]["fxgraph_cache_hit"]}))
"""


def run_worker(cache_dir: Path, inductor_dir: Path) -> dict:
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(inductor_dir), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(cache_dir)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_worker_loads_the_first_ones_artifacts_and_hits_them(tmp_path: Path) -> None:
    cache_dir = tmp_path / "kiln-compile-cache"
    # Each worker gets its own, empty Inductor cache: only the saved artifacts can carry kernels over.
    cold = run_worker(cache_dir, tmp_path / "inductor-1")
    warm = run_worker(cache_dir, tmp_path / "inductor-2")
    assert cold["loaded"] == 0 and cold["saved"] > 0 and cold["hits"] == 0
    assert warm["loaded"] == cold["saved"] and warm["hits"] >= 1
    assert warm["sum"] == pytest.approx(cold["sum"])
    (artifacts,) = cache_dir.glob(f"*{compile_cache.SUFFIX}")
    assert json.loads(Path(f"{artifacts}.json").read_text())["models"] == ["tiny"]
    assert not list(cache_dir.glob(".partial-*"))
