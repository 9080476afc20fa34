"""InstantID's weights with random values, in the layout of ``InstantX/InstantID`` (``models.instantid_xl.weights``).

- ``ControlNetModel/``: the keypoint ControlNet. Tiny: the family's tiny ControlNet blocks (RGB
  conditioning), made to depend on its control image like the family's (``make_conditioning_observable``);
  random-full: ``configs/controlnet_instantid.json`` at full size.
- ``ip-adapter.bin``: the face adapter as InstantID publishes it, a torch pickle of ``image_proj`` (the
  resampler from the 512-d face embedding to 16 tokens) and ``ip_adapter`` (each cross-attention's
  ``to_k_ip`` / ``to_v_ip``). Written as a pickle on purpose, so that the tiny profile goes through the
  same one-time conversion to safetensors as the real file (``weights.adapter_file``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel

from models.kit.fake_weights.building import builder_fingerprint, ensure_built
from models.kit.fake_weights.published import read_config
from models.sdxl_family.fake_weights.builder import (
    SAVED_DTYPE,
    make_conditioning_observable,
    meta_unet,
    random_attention_ip_weights,
    random_resampler_weights,
)
from models.sdxl_family.fake_weights.layout_configs import full_configs, tiny_configs
from models.sdxl_family.layout import control_kinds

CONFIG = Path(__file__).parents[1] / "configs" / "controlnet_instantid.json"
CONTROLNET_DIR = "ControlNetModel"
ADAPTER_BIN = "ip-adapter.bin"
FACE_EMBEDDING_SIZE = 512
# InstantID's resampler is 1280 wide (20 heads of 64); the tiny one is one head wide.
FULL_RESAMPLER_WIDTH = 1280
TINY_RESAMPLER_WIDTH = 64
SEED = 0
_BUILDERS = (__name__, "models.sdxl_family.fake_weights.builder", "models.sdxl_family.fake_weights.layout_configs")


def tiny_controlnet_config() -> dict:
    """The family's tiny ControlNet blocks with InstantID's RGB keypoint conditioning."""
    configs = tiny_configs(control_kinds()[:1])
    [config] = configs.controlnets.values()
    return {**config, "conditioning_channels": read_config(CONFIG)["conditioning_channels"]}


def build_instantid(folder: Path, *, tiny: bool, device: str = "cpu") -> None:
    """Write ``ControlNetModel/`` and ``ip-adapter.bin`` with random weights (fixed seed) into ``folder``."""
    torch.manual_seed(SEED)
    configs = tiny_configs(control_kinds()[:1]) if tiny else full_configs(control_kinds()[:1])
    unet = meta_unet(configs)
    width = TINY_RESAMPLER_WIDTH if tiny else FULL_RESAMPLER_WIDTH
    adapter = {
        "image_proj": random_resampler_weights(
            FACE_EMBEDDING_SIZE, width, unet.config.cross_attention_dim, device=device
        ),
        "ip_adapter": random_attention_ip_weights(unet, device),
    }
    with torch.device(device):
        controlnet = ControlNetModel.from_config(tiny_controlnet_config() if tiny else read_config(CONFIG))
        if tiny:
            make_conditioning_observable(controlnet)
        else:
            controlnet = controlnet.to(SAVED_DTYPE)
        controlnet.save_pretrained(folder / CONTROLNET_DIR)
        del controlnet
    dtype = torch.float32 if tiny else SAVED_DTYPE
    torch.save(
        {part: {name: tensor.to(dtype).cpu() for name, tensor in tensors.items()} for part, tensors in adapter.items()},
        folder / ADAPTER_BIN,
    )


def ensure_tiny_instantid(weights_dir: Path) -> Path:
    """The tiny InstantID folder under ``weights_dir``, built on first use."""
    return ensure_built(
        Path(weights_dir) / "tiny" / "instantid",
        builder_fingerprint(*_BUILDERS),
        lambda f: build_instantid(f, tiny=True),
    )


def ensure_random_full_instantid(weights_dir: Path, device: torch.device) -> Path:
    """The full-size random InstantID folder under ``weights_dir``, built on ``device`` on first use."""
    return ensure_built(
        Path(weights_dir) / "random-full" / "instantid",
        builder_fingerprint(*_BUILDERS),
        lambda f: build_instantid(f, tiny=False, device=str(device)),
    )
