"""``kiln/sd2-depth2img``'s weights in each profile: what ``from_pretrained`` loads.

- ``full``: ``KILN_SD2_DEPTH2IMG_WEIGHTS`` (``stabilityai/stable-diffusion-2-depth`` by default).
- ``tiny`` and ``random-full``: local folders of random weights, built on first use by
  ``fake_weights.py``.
"""

from __future__ import annotations

from models.kit.weights.loading import weights_source
from models.sd2_depth2img.fake_weights import ensure_random_full_sd2_depth2img, ensure_tiny_sd2_depth2img
from shared.settings import Settings


def sd2_depth2img_source(settings: Settings) -> str:
    """What the predictor passes to ``from_pretrained`` in the settings' profile (local folders built on first use)."""
    return weights_source(
        settings, settings.sd2_depth2img_weights, ensure_tiny_sd2_depth2img, ensure_random_full_sd2_depth2img
    )
