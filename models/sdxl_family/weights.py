"""The family's weights in each profile: where each part comes from, and the layouts built locally.

- ``full``: Hub ids or folders from the settings (each ControlNet from its kind's ``weights_setting``).
- ``tiny``: the small configs (``configs.tiny_configs``) with random weights, built on the CPU in
  seconds into ``<weights_dir>/tiny/sdxl``.
- ``random-full``: every model at full size with random weights, for timing on a GPU that real
  weights cannot reach: the published configs are built directly on the device and saved once in
  fp16 under ``<weights_dir>/random-full/sdxl`` (about 16 GB with two ControlNets). Real shapes and
  FLOPs; the images are noise.

Both local layouts hold a ControlNet per registered kind and load through the same
``from_pretrained`` calls as the full profile. The annotators are the tiny profile's in both: they
already are the real, full-size detector architectures (``annotators``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from models.kit.devices import resolve_device
from models.kit.weights.tiny import builder_fingerprint, ensure_built
from models.sdxl_family.annotators import ensure_tiny_annotators
from models.sdxl_family.builder import BASE_DIR, IP_ADAPTER_DIR, VAE_FP16_DIR, build_xl_weights
from models.sdxl_family.configs import control_kinds, full_configs, layout_digest, tiny_configs
from shared.settings import Settings

SEED = 0
# random-full is saved in half precision whatever the device: half the disk and load time; loading casts.
SAVED_DTYPE = torch.float16
# The modules that shape the layouts' files: their source is part of the fingerprint.
_BUILDERS = (__name__, "models.sdxl_family.builder", "models.sdxl_family.configs")


@dataclass(frozen=True)
class XLWeights:
    """Where each part of the XL models comes from: local folders (tiny, random-full) or Hub ids (full)."""

    base: str
    # Replaces the base's VAE when set: the fp16-safe one, on CUDA.
    vae: str | None
    # By control kind name.
    controlnets: Mapping[str, str]
    ip_adapter: str
    annotators: str


def xl_weights(settings: Settings) -> XLWeights:
    """The weights of the settings' profile; the tiny and random-full folders are built on first use."""
    on_cuda = resolve_device(settings.device).type == "cuda"
    kinds = control_kinds()
    if settings.weights_profile == "full":
        return XLWeights(
            base=settings.sdxl_base_weights,
            vae=settings.sdxl_vae_fp16_weights if on_cuda else None,
            controlnets={kind.name: getattr(settings, kind.weights_setting) for kind in kinds},
            ip_adapter=settings.ip_adapter_weights,
            annotators=settings.annotators_weights,
        )
    weights_dir = settings.resolved_weights_dir
    if settings.weights_profile == "tiny":
        root = ensure_tiny_sdxl(weights_dir)
    else:
        root = ensure_random_full_sdxl(weights_dir, resolve_device(settings.device))
    return XLWeights(
        base=str(root / BASE_DIR),
        vae=str(root / VAE_FP16_DIR) if on_cuda else None,
        controlnets={kind.name: str(root / kind.folder) for kind in kinds},
        ip_adapter=str(root / IP_ADAPTER_DIR),
        annotators=str(ensure_tiny_annotators(weights_dir, kinds)),
    )


def build_tiny_sdxl(folder: Path) -> None:
    """Build the tiny SDXL layout with random weights under a fixed seed and save it into ``folder``.

    The ControlNets' zero convolutions get random weights, so that the control image and
    ``controlnet_conditioning_scale`` change the output. Deterministic on the CPU.
    """
    build_xl_weights(folder, tiny_configs(), seed=SEED, observable_controlnets=True)


def ensure_tiny_sdxl(weights_dir: Path) -> Path:
    """The folder of the tiny SDXL layout under ``weights_dir``, built on first use."""
    return ensure_built(
        Path(weights_dir) / "tiny" / "sdxl",
        f"{builder_fingerprint(*_BUILDERS)}-{layout_digest(control_kinds())}",
        build_tiny_sdxl,
    )


def ensure_random_full_sdxl(weights_dir: Path, device: torch.device) -> Path:
    """The folder of the random full-size SDXL layout under ``weights_dir``, built on ``device`` on first use.

    Building on the GPU takes seconds per model where random initialisation on a CPU takes minutes.
    """

    def build(folder: Path) -> None:
        build_xl_weights(folder, full_configs(), seed=SEED, dtype=SAVED_DTYPE, device=str(device))

    return ensure_built(
        Path(weights_dir) / "random-full" / "sdxl",
        f"{builder_fingerprint(*_BUILDERS)}-{layout_digest(control_kinds())}",
        build,
    )
