"""Write the family's weights layout (``models.sdxl_family.layout``) from configs, with random weights.

The tiny profile (small configs) and the random-full profile (the published full-size configs) share
this builder and the layout; each builds its folder once per fingerprint under the weights directory:

- ``tiny``: the small configs (``layout_configs.tiny_configs``) with random weights, built on the CPU
  in seconds into ``<weights_dir>/tiny/sdxl``.
- ``random-full``: every model at full size with random weights, for timing on a GPU that real
  weights cannot reach: the published configs are built directly on the device and saved once in
  fp16 under ``<weights_dir>/random-full/sdxl`` (about 16 GB with two ControlNets). Real shapes and
  FLOPs; the images are noise.

Both hold a ControlNet per registered kind. The tokenizers are the small byte-level ones of
``models.kit.fake_weights.building`` in both profiles (the real CLIP vocabulary is not in the repo);
prompts are padded to 77 tokens either way, so shapes match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

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

from models.kit.fake_weights.building import builder_fingerprint, ensure_built, save_tiny_clip_tokenizer
from models.sdxl_family.fake_weights.layout_configs import XLConfigs, full_configs, layout_digest, tiny_configs
from models.sdxl_family.layout import (
    ADAPTER_FILES,
    BASE_DIR,
    IMAGE_ENCODER_DIR,
    IP_ADAPTER_DIR,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT_NAME,
    PLUS_ENCODER_SUBFOLDER,
    VAE_FP16_DIR,
    control_kinds,
)
from models.sdxl_family.schema import IPAdapterVariant
from models.sdxl_family.spec import controlnet_folder

ModelT = TypeVar("ModelT", bound=torch.nn.Module)

SEED = 0
# random-full is saved in half precision whatever the device: half the disk and load time; loading casts.
SAVED_DTYPE = torch.float16
# The modules that shape the layout's files: their source is part of the fingerprint.
_BUILDERS = (__name__, "models.sdxl_family.fake_weights.layout_configs", "models.sdxl_family.layout")
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


# IP-Adapter Plus's resampler (diffusers' IPAdapterPlusImageProjection): depth 4, heads of 64 channels, 16 queries.
RESAMPLER_DEPTH = 4
RESAMPLER_HEAD_DIM = 64
RESAMPLER_QUERIES = 16
RESAMPLER_FF_MULT = 4


def random_resampler_weights(
    embed_dim: int, hidden_dim: int, output_dim: int, *, queries: int = RESAMPLER_QUERIES, device: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """Random weights of IP-Adapter Plus's resampler, keyed as the published files key it (``image_proj.``
    omitted): ``latents``, ``proj_in``, four blocks of ``0.norm1/norm2/to_q/to_kv/to_out`` attention and
    ``1.0/1.1/1.3`` feed-forward, ``proj_out``, ``norm_out``. InstantID's adapter uses the same resampler
    on a 512-d face embedding. ``hidden_dim`` must be a multiple of 64 (diffusers reads heads from it)."""
    if hidden_dim % RESAMPLER_HEAD_DIM:
        raise ValueError(f"the resampler's width must be a multiple of {RESAMPLER_HEAD_DIM}, got {hidden_dim}")

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return torch.randn(out_features, in_features, device=device) * in_features**-0.5

    def norm(prefix: str, size: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": torch.ones(size, device=device), f"{prefix}.bias": torch.zeros(size, device=device)}

    weights = {
        "latents": torch.randn(1, queries, hidden_dim, device=device) * hidden_dim**-0.5,
        "proj_in.weight": linear(hidden_dim, embed_dim),
        "proj_in.bias": torch.zeros(hidden_dim, device=device),
        "proj_out.weight": linear(output_dim, hidden_dim),
        "proj_out.bias": torch.zeros(output_dim, device=device),
        **norm("norm_out", output_dim),
    }
    inner = RESAMPLER_FF_MULT * hidden_dim
    for block in range(RESAMPLER_DEPTH):
        prefix = f"layers.{block}"
        weights |= norm(f"{prefix}.0.norm1", hidden_dim) | norm(f"{prefix}.0.norm2", hidden_dim)
        weights[f"{prefix}.0.to_q.weight"] = linear(hidden_dim, hidden_dim)
        weights[f"{prefix}.0.to_kv.weight"] = linear(2 * hidden_dim, hidden_dim)
        weights[f"{prefix}.0.to_out.weight"] = linear(hidden_dim, hidden_dim)
        weights |= norm(f"{prefix}.1.0", hidden_dim)
        weights[f"{prefix}.1.1.weight"] = linear(inner, hidden_dim)
        weights[f"{prefix}.1.3.weight"] = linear(hidden_dim, inner)
    return weights


def random_attention_ip_weights(unet: UNet2DConditionModel, device: Any = "cpu") -> dict[str, torch.Tensor]:
    """Random ``to_k_ip`` / ``to_v_ip`` of every cross-attention (``attn2``) layer of ``unet`` (its shapes only: it
    may be on the meta device), numbered 1, 3, 5, ... in ``unet.attn_processors`` order, as diffusers' loader
    reads them (``ip_adapter.`` omitted), on ``device``."""
    cross_dim = unet.config.cross_attention_dim
    weights = {}
    cross_attentions = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for index, name in enumerate(cross_attentions):
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for projection in ("to_k_ip", "to_v_ip"):
            weights[f"{2 * index + 1}.{projection}.weight"] = (
                torch.randn(hidden, cross_dim, device=device) * cross_dim**-0.5
            )
    return weights


def random_plus_adapter_weights(
    unet: UNet2DConditionModel, encoder_hidden_size: int, device: Any = "cpu"
) -> dict[str, torch.Tensor]:
    """Random IP-Adapter Plus weights for ``unet`` (shapes only), keyed like ``ip-adapter-plus_sdxl_vit-h.safetensors``:
    a resampler from the ViT-H encoder's patch features to 16 tokens, and the layers' projections."""
    cross_dim = unet.config.cross_attention_dim
    hidden = max(RESAMPLER_HEAD_DIM, (encoder_hidden_size // RESAMPLER_HEAD_DIM) * RESAMPLER_HEAD_DIM)
    resampler = random_resampler_weights(encoder_hidden_size, hidden, cross_dim, device=device)
    return {f"image_proj.{name}": tensor for name, tensor in resampler.items()} | {
        f"ip_adapter.{name}": tensor for name, tensor in random_attention_ip_weights(unet, device).items()
    }


def meta_unet(configs: XLConfigs) -> UNet2DConditionModel:
    """The layout's UNet without storage: its shapes, for weights that fit it."""
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(configs.unet)


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
        # The Plus adapters' encoder and weights (Plus and Plus-Face have the same shapes; their weights differ
        # in training only), drawn last from a seed of their own: adding them left every other model's as it was.
        torch.manual_seed(seed + 1)
        plus_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**configs.plus_image_encoder))
        _in_dtype(plus_encoder, dtype).save_pretrained(
            folder / IP_ADAPTER_DIR / PLUS_ENCODER_SUBFOLDER / IMAGE_ENCODER_DIR
        )
        del plus_encoder
        plus_adapters = {
            ADAPTER_FILES[variant].weight_name: random_plus_adapter_weights(
                meta_unet(configs), configs.plus_image_encoder["hidden_size"], device
            )
            for variant in (IPAdapterVariant.PLUS, IPAdapterVariant.PLUS_FACE)
        }
    for weight_name, weights in {IP_ADAPTER_WEIGHT_NAME: ip_adapter, **plus_adapters}.items():
        save_file(
            {name: tensor.to(dtype).cpu().contiguous() for name, tensor in weights.items()}, ip_folder / weight_name
        )


def build_tiny_sdxl(folder: Path) -> None:
    """Build the tiny SDXL layout with random weights under a fixed seed and save it into ``folder``.

    The ControlNets' zero convolutions get random weights, so that the control image and
    ``controlnet_conditioning_scale`` change the output. Deterministic on the CPU.
    """
    build_xl_weights(folder, tiny_configs(), seed=SEED, observable_controlnets=True)


def ensure_tiny_sdxl(weights_dir: Path) -> Path:
    """The folder of the tiny SDXL layout under ``weights_dir``, built on first use."""
    return ensure_built(
        Path(weights_dir) / "tiny" / "sdxl",
        f"{builder_fingerprint(*_BUILDERS)}-{layout_digest(control_kinds())}",
        build_tiny_sdxl,
    )


def ensure_random_full_sdxl(weights_dir: Path, device: torch.device) -> Path:
    """The folder of the random full-size SDXL layout under ``weights_dir``, built on ``device`` on first use.

    Building on the GPU takes seconds per model where random initialisation on a CPU takes minutes.
    """

    def build(folder: Path) -> None:
        build_xl_weights(folder, full_configs(), seed=SEED, dtype=SAVED_DTYPE, device=str(device))

    return ensure_built(
        Path(weights_dir) / "random-full" / "sdxl",
        f"{builder_fingerprint(*_BUILDERS)}-{layout_digest(control_kinds())}",
        build,
    )
