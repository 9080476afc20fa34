"""torch.compile's cache artifacts kept between worker starts, so a warm worker skips most compiling.

After the compile warm-up the worker saves what Inductor and its autotuning produced
(``torch.compiler.save_cache_artifacts``: kernels, autotune picks, compiled graphs) to
``KILN_COMPILE_CACHE_DIR``; the next worker with the same key loads it
(``torch.compiler.load_cache_artifacts``) before its warm-up, which then finds its kernels instead of
building them. The artifacts are only valid for the torch and Triton that made them, on the same GPU,
for the same models, shapes and compile mode: all of that is in the file's key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SUFFIX = ".torch-compile-cache"


@dataclass(frozen=True)
class CacheKey:
    """Everything the artifacts depend on; ``name`` is its file name."""

    torch: str
    triton: str | None
    device: str
    models: tuple[str, ...]
    shapes: tuple[str, ...]
    compile: str

    @property
    def name(self) -> str:
        fields = json.dumps(self.__dict__, sort_keys=True)
        digest = hashlib.sha256(fields.encode()).hexdigest()[:16]
        return f"torch-{self.torch}-{digest}{SUFFIX}"


def triton_version() -> str | None:
    try:
        return metadata.version("triton")
    except metadata.PackageNotFoundError:
        return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def cache_key(
    device: torch.device,
    models: Iterable[str],
    shapes: Iterable[tuple[int, int]],
    batch_sizes: Iterable[int],
    compile_backend: str,
    compile_mode: str,
) -> CacheKey:
    """The key of the artifacts a warm-up of ``models`` at ``shapes`` x ``batch_sizes`` produces."""
    return CacheKey(
        torch=torch.__version__,
        triton=triton_version(),
        device=device_name(device),
        models=tuple(sorted(models)),
        shapes=tuple(f"{w}x{h}@{b}" for w, h in sorted(shapes) for b in sorted(set(batch_sizes))),
        compile=f"{compile_backend}:{compile_mode}",
    )


def load(directory: Path, key: CacheKey) -> int:
    """Load the artifacts saved under ``key`` into this process; their size in bytes, 0 if there are none."""
    path = directory / key.name
    try:
        artifacts = path.read_bytes()
    except FileNotFoundError:
        log.info("compile cache: nothing saved for this key yet (%s)", path.name)
        return 0
    torch.compiler.load_cache_artifacts(artifacts)
    log.info("compile cache: loaded %d bytes from %s", len(artifacts), path)
    return len(artifacts)


def save(directory: Path, key: CacheKey) -> int:
    """Save this process's compile artifacts under ``key`` (written whole or not at all); their size."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        log.info("compile cache: nothing compiled to save")
        return 0
    artifacts, _ = saved
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / key.name
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".partial-", delete=False) as partial:
        partial.write(artifacts)
    os.replace(partial.name, path)
    (directory / f"{key.name}.json").write_text(json.dumps(key.__dict__, indent=1, sort_keys=True))
    log.info("compile cache: saved %d bytes to %s", len(artifacts), path)
    return len(artifacts)
