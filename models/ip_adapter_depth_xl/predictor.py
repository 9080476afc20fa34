"""``kiln/ip-adapter-depth-xl``: SDXL + IP-Adapter + a depth ControlNet, depth from controlnet-aux MiDaS.

The depth map comes from ``MidasDetector`` (DPT-hybrid, ``dpt_hybrid-midas-501f0c75.pt`` from
``lllyasviel/Annotators``) unless the user passes ``control_image``. The tiny and random-full
profiles load the same detector class through the same loader, from random weights
(``fake_weights.py``): their depth maps are image-dependent textures, not depth.
"""

from __future__ import annotations

from models.ip_adapter_depth_xl import CONTROL
from models.sdxl_family.predictor import IPAdapterXLPredictor


class IPAdapterDepthXLPredictor(IPAdapterXLPredictor):
    """An image prompt, laid out like the depth of a reference image."""

    control = CONTROL
