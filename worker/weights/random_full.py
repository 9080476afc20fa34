"""The random-full weights profile: every model at full size, random weights.

For timing on a GPU that real weights cannot reach: the published configs in ``configs/`` (sources
in its README) are built with random weights directly on the device, saved once in fp16 under
``<weights_dir>/random-full/`` (SDXL with its ControlNets and IP-Adapter: about 16 GB; SD2
depth2img: about 2.8 GB), and from then on loaded with ``from_pretrained`` exactly like the tiny
and full profiles. The models have the real shapes and FLOPs; their images are noise. The
annotators are the tiny profile's, which already are the real, full-size detector architectures
(see ``worker.weights.tiny_annotators``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionDepth2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

from worker.weights.sdxl_builder import XLConfigs, build_xl_weights, configs_digest, load_config
from worker.weights.tiny import builder_fingerprint, ensure_built, save_tiny_clip_tokenizer
from worker.weights.tiny_sd2_depth2img import make_depth_observable

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


def build_sd2_depth2img_weights(folder: Path, *, seed: int, dtype: torch.dtype = torch.float32,
                                device: str = "cpu") -> None:
    """``stabilityai/stable-diffusion-2-depth``'s layout from its published configs, random weights, into ``folder``.

    The tokenizer is the tiny profile's (the real CLIP vocabulary is not in the repo); prompts are
    padded to 77 tokens either way. The DPT depth estimator is made to depend on its input
    (``make_depth_observable``): a flat random depth map would normalise to NaN.
    """
    tokenizer = save_tiny_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    with torch.device(device):
        pipe = StableDiffusionDepth2ImgPipeline(
            vae=AutoencoderKL.from_config(load_config("sd2_depth_vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig(**load_config("sd2_depth_text_encoder"))),
            tokenizer=tokenizer,
            unet=UNet2DConditionModel.from_config(load_config("sd2_depth_unet")),
            scheduler=PNDMScheduler.from_config(load_config("sd2_depth_scheduler")),
            depth_estimator=make_depth_observable(DPTForDepthEstimation(DPTConfig(**load_config("sd2_depth_estimator")))),
            feature_extractor=DPTImageProcessor(**load_config("sd2_depth_feature_extractor")),
        )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(folder)


def ensure_random_full_sd2_depth2img(weights_dir: Path, device: torch.device) -> Path:
    """The folder of the random full-size SD2 depth2img pipeline under ``weights_dir``, built on first use."""

    def build(folder: Path) -> None:
        build_sd2_depth2img_weights(folder, seed=SEED, dtype=SAVED_DTYPE, device=str(device))

    return ensure_built(
        Path(weights_dir) / "random-full" / "sd2-depth2img",
        f"{builder_fingerprint(__name__, 'worker.weights.tiny_sd2_depth2img')}-{configs_digest()}",
        build,
    )
