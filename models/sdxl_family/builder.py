"""Write an SDXL + ControlNets + IP-Adapter weights folder from configs, with random weights.

The tiny profile (small configs) and the random-full profile (the published full-size configs) share
this builder and one layout, which mirrors where the full profile's weights live so that the
predictors load every profile with the same ``from_pretrained`` / ``load_ip_adapter`` calls::

    sdxl-base/               StableDiffusionXLPipeline   stabilityai/stable-diffusion-xl-base-1.0
    sdxl-vae-fp16-fix/       AutoencoderKL               madebyollin/sdxl-vae-fp16-fix
    controlnet-<kind>/       ControlNetModel             e.g. diffusers/controlnet-depth-sdxl-1.0 (one per kind)
    ip-adapter/sdxl_models/  ip-adapter_sdxl.safetensors and image_encoder/   h94/IP-Adapter

The base is saved without image encoder and feature extractor: ``load_ip_adapter`` registers them.
The tokenizers are the small byte-level ones of ``models.kit.weights.tiny`` in both profiles (the real
CLIP vocabulary is not in the repo); prompts are padded to 77 tokens either way, so shapes match.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from models.kit.weights.tiny import save_tiny_clip_tokenizer
from models.sdxl_family.configs import XLConfigs
from models.sdxl_family.spec import controlnet_folder

ModelT = TypeVar("ModelT", bound=torch.nn.Module)

BASE_DIR = "sdxl-base"
VAE_FP16_DIR = "sdxl-vae-fp16-fix"
IP_ADAPTER_DIR = "ip-adapter"
IP_ADAPTER_SUBFOLDER = "sdxl_models"
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sdxl.safetensors"
# load_ip_adapter's default image_encoder_folder, looked up under IP_ADAPTER_SUBFOLDER.
IMAGE_ENCODER_DIR = "image_encoder"
# IP-Adapter (not Plus) turns the image embedding into this many extra text tokens.
IP_ADAPTER_TOKENS = 4
# Weight spread given to a ControlNet's zero convolutions in the tiny profile.
OBSERVABLE_ZERO_CONV_STD = 0.1
# Side of the ramp image the conditioning embedding is calibrated on; a multiple of its downscale.
EMBEDDING_PROBE_SIDE = 64


def make_conditioning_observable(controlnet: ControlNetModel, std: float = OBSERVABLE_ZERO_CONV_STD) -> None:
    """Make a fresh ControlNet's output depend on its control image, as a trained one's does.

    ``ControlNetModel`` starts with zero convolutions, which makes a random one ignore its control
    image entirely, and the tiny profile's tests must see the difference. The zero convolutions get
    random weights. The conditioning embedding's eight SiLU convolutions get He initialisation (with
    PyTorch's default they shrink the control image to a thousandth and blur away its layout), then
    its last one is rescaled so that a ramp image comes out with unit spread: about as strong as the
    latents the embedding is added to.
    """
    embedding = controlnet.controlnet_cond_embedding
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    with torch.no_grad():
        for conv in zero_convs:
            torch.nn.init.normal_(conv.weight, std=std)
        for conv in embedding.modules():
            if isinstance(conv, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        ramp = torch.linspace(0, 1, EMBEDDING_PROBE_SIDE).expand(
            1, controlnet.config.conditioning_channels, EMBEDDING_PROBE_SIDE, EMBEDDING_PROBE_SIDE
        )
        embedding.conv_out.weight.div_(embedding(ramp).std())


def random_ip_adapter_weights(unet: UNet2DConditionModel, image_embed_dim: int) -> dict[str, torch.Tensor]:
    """Random IP-Adapter weights for ``unet``, keyed like ``ip-adapter_sdxl.safetensors``.

    ``image_proj`` maps the image encoder's embedding to ``IP_ADAPTER_TOKENS`` tokens of the UNet's
    cross-attention width; every cross-attention (``attn2``) layer gets ``to_k_ip`` / ``to_v_ip``,
    numbered 1, 3, 5, ... in ``unet.attn_processors`` order, as diffusers' loader reads them.
    """
    cross_dim = unet.config.cross_attention_dim
    device = unet.device

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return torch.randn(out_features, in_features, device=device) * in_features**-0.5

    weights = {
        "image_proj.proj.weight": linear(IP_ADAPTER_TOKENS * cross_dim, image_embed_dim),
        "image_proj.proj.bias": torch.zeros(IP_ADAPTER_TOKENS * cross_dim, device=device),
        "image_proj.norm.weight": torch.ones(cross_dim, device=device),
        "image_proj.norm.bias": torch.zeros(cross_dim, device=device),
    }
    cross_attentions = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in enumerate(cross_attentions):
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        weights[f"ip_adapter.{2 * index + 1}.to_k_ip.weight"] = linear(hidden, cross_dim)
        weights[f"ip_adapter.{2 * index + 1}.to_v_ip.weight"] = linear(hidden, cross_dim)
    return weights


def _in_dtype(model: ModelT, dtype: torch.dtype) -> ModelT:
    # Models are built in float32; casting to it anyway would only make diffusers warn.
    return model if dtype == torch.float32 else model.to(dtype)


def _save_base(folder: Path, configs: XLConfigs, dtype: torch.dtype) -> UNet2DConditionModel:
    tokenizer = save_tiny_clip_tokenizer(folder / "tokenizer")
    tokenizer_2 = save_tiny_clip_tokenizer(folder / "tokenizer_2")
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_config(configs.vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**configs.text_encoder)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**configs.text_encoder_2)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=UNet2DConditionModel.from_config(configs.unet),
        scheduler=EulerDiscreteScheduler.from_config(configs.scheduler),
    )
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.save_pretrained(folder)
    return pipe.unet


def build_xl_weights(
    folder: Path,
    configs: XLConfigs,
    *,
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    observable_controlnets: bool = False,
) -> None:
    """Build every model of ``configs`` with random weights on ``device`` and save it into ``folder``.

    Models are built in float32, saved in ``dtype`` and dropped one at a time (the base pipeline's
    together), so peak memory stays near the base's size. ``observable_controlnets`` applies
    ``make_conditioning_observable`` (tiny profile). Deterministic on the CPU: two builds with the
    same libraries write identical files.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        unet = _save_base(folder / BASE_DIR, configs, dtype)
        ip_adapter = random_ip_adapter_weights(unet, configs.image_encoder["projection_dim"])
        del unet
        _in_dtype(AutoencoderKL.from_config(configs.vae_fp16), dtype).save_pretrained(folder / VAE_FP16_DIR)
        for kind, config in configs.controlnets.items():
            controlnet = ControlNetModel.from_config(config)
            if observable_controlnets:
                make_conditioning_observable(controlnet)
            _in_dtype(controlnet, dtype).save_pretrained(folder / controlnet_folder(kind))
            del controlnet
        ip_folder = folder / IP_ADAPTER_DIR / IP_ADAPTER_SUBFOLDER
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.image_encoder))
        _in_dtype(image_encoder, dtype).save_pretrained(ip_folder / IMAGE_ENCODER_DIR)
        del image_encoder
    save_file(
        {name: tensor.to(dtype).cpu().contiguous() for name, tensor in ip_adapter.items()},
        ip_folder / IP_ADAPTER_WEIGHT_NAME,
    )
