"""The family's weights in each profile: where each part comes from.

- ``full``: Hub ids or folders from the settings (each ControlNet from its kind's ``weights_setting``).
- ``tiny`` and ``random-full``: local folders of random weights in the family's layout
  (``layout.py``), built on first use by ``fake_weights`` and loaded through the same
  ``from_pretrained`` calls as the full profile. The annotators are the tiny profile's in both: they
  already are the real, full-size detector architectures (``fake_weights.annotators``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from models.kit.devices import resolve_device
from models.sdxl_family.fake_weights.annotators import ensure_tiny_annotators
from models.sdxl_family.fake_weights.builder import ensure_random_full_sdxl, ensure_tiny_sdxl
from models.sdxl_family.layout import BASE_DIR, IP_ADAPTER_DIR, VAE_FP16_DIR, control_kinds
from shared.settings import Settings


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
