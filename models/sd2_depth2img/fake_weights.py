"""``kiln/sd2-depth2img``'s fake weights: the tiny and random-full pipelines, random weights, built locally.

- ``tiny``: the real classes, small configs, random weights. The layout mirrors
  ``stabilityai/stable-diffusion-2-depth`` (a UNet taking 4 latent + 1 depth channels, a VAE that
  downsamples by 8, a CLIP text encoder, a hybrid DPT depth estimator with a BiT backbone) so the
  predictor loads it exactly like the real weights. Its images are noise.
- ``random-full``: the published configs in ``configs/`` (sources in its README) with random
  weights, built on the device and saved once in fp16 (about 2.8 GB), for GPU timing: real shapes
  and FLOPs, noise images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionDepth2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, DPTConfig, DPTForDepthEstimation, DPTImageProcessor

from models.kit.fake_weights.building import builder_fingerprint, ensure_built, save_tiny_clip_tokenizer
from models.kit.fake_weights.published import configs_digest, read_config

# The published configs of stabilityai/stable-diffusion-2-depth (sources in configs/README.md).
CONFIGS_DIR = Path(__file__).parent / "configs"
SEED = 0
# random-full is saved in half precision whatever the device: half the disk and load time; loading casts.
SAVED_DTYPE = torch.float16
TEXT_HIDDEN_SIZE = 32
# The DPT's input side; its BiT backbone downsamples by 16, so the ViT sees a 4x4 grid of patches.
DEPTH_INPUT_SIDE = 64


def load_config(name: str) -> dict[str, Any]:
    """A published config from ``configs/``, by file name without ``.json``."""
    return read_config(CONFIGS_DIR / f"{name}.json")


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=5,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=8,
        use_linear_projection=True,
    )


def _vae() -> AutoencoderKL:
    # Four blocks, like SD's VAE, so latents are 1/8 of the image side.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )


def _text_encoder(vocab_size: int, tokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN_SIZE,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _depth_estimator() -> DPTForDepthEstimation:
    config = DPTConfig(
        image_size=DEPTH_INPUT_SIDE,
        patch_size=16,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        is_hybrid=True,
        backbone_out_indices=(0, 1, 2, 3),
        backbone_config={
            "global_padding": "same",
            "layer_type": "bottleneck",
            "depths": [1, 1, 1],
            "out_features": ["stage1", "stage2", "stage3"],
            "embedding_dynamic_padding": True,
            "embedding_size": 16,
            "hidden_sizes": [16, 32, 64],
            "num_groups": 4,
        },
        backbone_featmap_shape=[1, 64, DEPTH_INPUT_SIDE // 16, DEPTH_INPUT_SIDE // 16],
        neck_hidden_sizes=(16, 32, 32, 32),
        fusion_hidden_size=32,
    )
    return make_depth_observable(DPTForDepthEstimation(config))


def make_depth_observable(model: DPTForDepthEstimation) -> DPTForDepthEstimation:
    """Make a random DPT's depth map vary with its input image, as a trained one's does; returns ``model``.

    transformers' init (std 0.02) leaves the random depth map flat to 1e-4 and blind to the image;
    PyTorch's default init in the neck and head makes it vary with the input, so the map survives
    fp16 and the pipeline's min-max normalisation (a flat map normalises to NaN). The positive
    bias keeps the head's final ReLU from zeroing the map.
    """
    with torch.no_grad():
        for module in (*model.neck.modules(), *model.head.modules()):
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                module.reset_parameters()
        # torch types a Module attribute as Tensor | Module: the last conv's bias is a Tensor.
        torch.nn.init.constant_(cast(torch.Tensor, model.head.head[-2].bias), 0.5)
    return model


def _feature_extractor() -> DPTImageProcessor:
    return DPTImageProcessor(
        size={"height": DEPTH_INPUT_SIDE, "width": DEPTH_INPUT_SIDE},
        keep_aspect_ratio=False,
        ensure_multiple_of=1,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def _scheduler() -> PNDMScheduler:
    # The scheduler config stable-diffusion-2-depth ships.
    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_sd2_depth2img(folder: Path) -> None:
    """Build the tiny pipeline with random weights under a fixed seed and save it into ``folder``.

    Deterministic: two builds with the same libraries write identical weight files.
    """
    tokenizer = save_tiny_clip_tokenizer(folder / "tokenizer")
    torch.manual_seed(SEED)
    pipe = StableDiffusionDepth2ImgPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer), tokenizer),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=_scheduler(),
        depth_estimator=_depth_estimator(),
        feature_extractor=_feature_extractor(),
    )
    pipe.save_pretrained(folder)


def ensure_tiny_sd2_depth2img(weights_dir: Path) -> Path:
    """The folder of the tiny depth2img pipeline under ``weights_dir``, built on first use."""
    return ensure_built(
        Path(weights_dir) / "tiny" / "sd2-depth2img",
        builder_fingerprint(__name__),
        build_tiny_sd2_depth2img,
    )


def build_sd2_depth2img_weights(
    folder: Path, *, seed: int, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> None:
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
            depth_estimator=make_depth_observable(
                DPTForDepthEstimation(DPTConfig(**load_config("sd2_depth_estimator")))
            ),
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
        f"{builder_fingerprint(__name__)}-{configs_digest(CONFIGS_DIR.glob('*.json'))}",
        build,
    )
