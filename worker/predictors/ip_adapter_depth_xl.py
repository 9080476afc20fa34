"""``kiln/ip-adapter-depth-xl``: SDXL + IP-Adapter + a depth ControlNet, depth from controlnet-aux MiDaS.

The depth map comes from ``MidasDetector`` (DPT-hybrid, ``dpt_hybrid-midas-501f0c75.pt`` from
``lllyasviel/Annotators``) unless the user passes ``control_image``. The tiny and random-full
profiles load the same detector class through the same loader, from random weights
(``worker.weights.tiny_annotators``): their depth maps are image-dependent textures, not depth.
"""

from __future__ import annotations

from controlnet_aux import MidasDetector

from worker.devices import resolve_device
from worker.predictors.ip_adapter_xl import IPAdapterXLPredictor
from worker.weights.loading import hub_cache_dir


class IPAdapterDepthXLPredictor(IPAdapterXLPredictor):
    """An image prompt, laid out like the depth of a reference image."""

    control_kind = "depth"

    def load_detector(self, source: str) -> MidasDetector:
        detector = MidasDetector.from_pretrained(source, cache_dir=hub_cache_dir(self.settings))
        return detector.to(resolve_device(self.settings.device))
