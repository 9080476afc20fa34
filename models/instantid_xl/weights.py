"""Where ``kiln/instantid-xl``'s own weights come from, in each profile.

- ``full``: ``KILN_INSTANTID_WEIGHTS`` (default ``InstantX/InstantID``: ``ControlNetModel/`` and
  ``ip-adapter.bin``) and ``KILN_INSIGHTFACE_WEIGHTS`` (antelopev2's ONNX files; ``face_weights``).
- ``tiny`` and ``random-full``: the same layout with random weights, built on first use
  (``fake_weights.builder``).

InstantID publishes its adapter as a torch pickle. It is converted once, at first load, into a
safetensors file beside Kiln's weights (``adapter_file``), read with ``torch.load(weights_only=True)``,
which restores tensors only; predictions only ever read the safetensors file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub import hf_hub_download
from safetensors.torch import save_file

from models.instantid_xl.fake_weights.builder import (
    ADAPTER_BIN,
    CONTROLNET_DIR,
    ensure_random_full_instantid,
    ensure_tiny_instantid,
)
from models.kit.weights.loading import hub_cache_dir, weights_source
from shared.settings import Settings

CONVERTED_DIR = "converted"
ADAPTER_SAFETENSORS = "ip-adapter.safetensors"


def instantid_source(settings: Settings) -> str:
    """The InstantID folder (tiny, random-full: built on first use) or Hub id (full)."""
    return weights_source(settings, settings.instantid_weights, ensure_tiny_instantid, ensure_random_full_instantid)


def controlnet_location(settings: Settings) -> tuple[str, str]:
    """What to pass ``from_pretrained`` for the keypoint ControlNet: the source and its subfolder."""
    return instantid_source(settings), CONTROLNET_DIR


def _adapter_pickle(settings: Settings) -> Path:
    source = instantid_source(settings)
    if Path(source).is_dir():
        return Path(source) / ADAPTER_BIN
    return Path(hf_hub_download(source, ADAPTER_BIN, cache_dir=hub_cache_dir(settings)))


def convert_adapter(pickle_path: Path, dest: Path) -> Path:
    """Write InstantID's pickled adapter (``{"image_proj": {...}, "ip_adapter": {...}}``) as one safetensors file
    of ``image_proj.*`` and ``ip_adapter.*`` tensors at ``dest``, once (under a lock: workers start together)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if not dest.exists():
            state = torch.load(pickle_path, map_location="cpu", weights_only=True)
            flat = {
                f"{part}.{name}": tensor.contiguous()
                for part in ("image_proj", "ip_adapter")
                for name, tensor in state[part].items()
            }
            partial = dest.with_suffix(".partial")
            save_file(flat, partial)
            partial.replace(dest)
    return dest


def adapter_file(settings: Settings) -> Path:
    """InstantID's adapter as a safetensors file, converted from its pickle on first use."""
    pickle_path = _adapter_pickle(settings)
    # Keyed by the pickle's path, size and time: a rebuilt or updated file is converted again.
    stat = pickle_path.stat()
    identity = f"{pickle_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return convert_adapter(pickle_path, settings.resolved_weights_dir / CONVERTED_DIR / digest / ADAPTER_SAFETENSORS)
