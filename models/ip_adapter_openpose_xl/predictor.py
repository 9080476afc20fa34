"""``kiln/ip-adapter-openpose-xl``: SDXL + IP-Adapter + an openpose ControlNet, pose from controlnet-aux.

The pose map (body keypoints, as ``thibaud/controlnet-openpose-sdxl-1.0`` was trained on) comes
from ``OpenposeDetector`` (``lllyasviel/Annotators``) unless the user passes ``control_image``.
The tiny and random-full profiles load the same detector through the same loader from random
weights (``fake_weights.py``): it finds no person, so their pose map is black.
"""

from __future__ import annotations

from models.ip_adapter_openpose_xl import CONTROL
from models.sdxl_family.predictor import IPAdapterXLPredictor


class IPAdapterOpenposeXLPredictor(IPAdapterXLPredictor):
    """An image prompt, posed like the person in a reference image."""

    control = CONTROL
