"""The random-full weights profile: SDXL, its ControlNets and IP-Adapter at full size, random weights.

For timing on a GPU that real weights cannot reach: the published configs in ``configs/`` (sources
in its README) are built with random weights directly on the device, saved once in fp16 under
``<weights_dir>/random-full/sdxl`` (about 16 GB; a few minutes), and from then on loaded with
``from_pretrained`` exactly like the tiny and full profiles. The models have the real shapes and
FLOPs; their images are noise. The annotators are the tiny profile's, which already are the real,
full-size detector architectures (see ``worker.weights.tiny_annotators``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from worker.weights.sdxl_builder import XLConfigs, build_xl_weights, configs_digest, load_config
from worker.weights.tiny import builder_fingerprint, ensure_built

SEED = 0
# Saved in half precision whatever the device: half the disk and load time; loading casts.
SAVED_DTYPE = torch.float16


def full_configs() -> XLConfigs:
    """The published configs of the full-size models the full profile downloads."""
    return XLConfigs(
        unet=load_config("sdxl_base_unet"),
        vae=load_config("sdxl_base_vae"),
        vae_fp16=load_config("sdxl_vae_fp16_fix"),
        text_encoder=load_config("sdxl_base_text_encoder"),
        text_encoder_2=load_config("sdxl_base_text_encoder_2"),
        scheduler=load_config("sdxl_base_scheduler"),
        controlnets={"depth": load_config("controlnet_depth_sdxl"), "openpose": load_config("controlnet_openpose_sdxl")},
        image_encoder=load_config("ip_adapter_sdxl_image_encoder"),
    )


def ensure_random_full_sdxl(weights_dir: Path, device: torch.device) -> Path:
    """The folder of the random full-size SDXL layout under ``weights_dir``, built on ``device`` on first use.

    Building on the GPU takes seconds per model where random initialisation on a CPU takes minutes.
    """

    def build(folder: Path) -> None:
        build_xl_weights(folder, full_configs(), seed=SEED, dtype=SAVED_DTYPE, device=str(device))

    return ensure_built(
        Path(weights_dir) / "random-full" / "sdxl",
        f"{builder_fingerprint(__name__, 'worker.weights.sdxl_builder')}-{configs_digest()}",
        build,
    )
