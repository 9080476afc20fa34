"""``kiln/ip-adapter-openpose-xl``: SDXL + IP-Adapter + an openpose ControlNet, pose from controlnet-aux.

The pose map (body keypoints, as ``thibaud/controlnet-openpose-sdxl-1.0`` was trained on) comes
from ``OpenposeDetector`` (``lllyasviel/Annotators``) unless the user passes ``control_image``.
The tiny and random-full profiles load the same detector through the same loader from random
weights (``worker.weights.tiny_annotators``): it finds no person, so their pose map is black.
"""

from __future__ import annotations

from controlnet_aux import OpenposeDetector

from worker.devices import resolve_device
from worker.predictors.ip_adapter_xl import IPAdapterXLPredictor
from worker.weights.loading import hub_cache_dir


class IPAdapterOpenposeXLPredictor(IPAdapterXLPredictor):
    """An image prompt, posed like the person in a reference image."""

    control_kind = "openpose"

    def load_detector(self, source: str) -> OpenposeDetector:
        detector = OpenposeDetector.from_pretrained(source, cache_dir=hub_cache_dir(self.settings))
        return detector.to(resolve_device(self.settings.device))
