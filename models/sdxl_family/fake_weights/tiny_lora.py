"""A small random LoRA that fits the tiny SDXL: for tests, and for trying ``lora_weights`` on a CPU.

It is keyed like a LoRA diffusers saves (PEFT names: ``unet.<module>.lora_A.weight`` /
``lora_B.weight``) over every attention projection of the tiny UNet and of both tiny text encoders,
with random weights strong enough to change the tiny profile's images visibly.

``python -m models.sdxl_family.fake_weights.tiny_lora OUT.safetensors [--seed N] [--rank R]`` writes one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from models.sdxl_family.fake_weights.layout_configs import XLConfigs, tiny_configs

DEFAULT_RANK = 4
# The UNet's attention projections (IP-Adapter's to_k_ip / to_v_ip live under ``.processor`` and are left alone).
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _targets(model: torch.nn.Module, endings: tuple[str, ...]) -> list[tuple[str, torch.nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".processor." not in name and name.endswith(endings)
    ]


def tiny_lora_state_dict(
    configs: XLConfigs | None = None, *, seed: int = 0, rank: int = DEFAULT_RANK
) -> dict[str, torch.Tensor]:
    """Random LoRA layers for the tiny SDXL's UNet and text encoders (the shapes of ``configs``)."""
    configs = configs or tiny_configs()
    models: dict[str, torch.nn.Module] = {
        "unet": UNet2DConditionModel.from_config(configs.unet),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**configs.text_encoder)),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**configs.text_encoder_2)),
    }
    generator = torch.Generator().manual_seed(seed)
    state_dict: dict[str, torch.Tensor] = {}
    for prefix, model in models.items():
        for name, module in _targets(model, UNET_TARGETS if prefix == "unet" else TEXT_TARGETS):
            # Spread like the layer's own weights: at scale 1 the LoRA changes the output about as much
            # as a trained one does, at scale 0 not at all.
            down = torch.randn(rank, module.in_features, generator=generator) * module.in_features**-0.5
            up = torch.randn(module.out_features, rank, generator=generator) * rank**-0.5
            state_dict[f"{prefix}.{name}.lora_A.weight"] = down.contiguous()
            state_dict[f"{prefix}.{name}.lora_B.weight"] = up.contiguous()
    return state_dict


def write_tiny_lora(path: Path, *, seed: int = 0, rank: int = DEFAULT_RANK) -> Path:
    """Write the tiny LoRA of ``seed`` to ``path`` (a ``.safetensors`` file); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_lora_state_dict(seed=seed, rank=rank), str(path), metadata={"format": "pt"})
    return path


def main(argv: list[str] | None = None) -> None:
    """Write a tiny LoRA to the file the command line names, to try ``lora_weights`` on a CPU."""
    parser = argparse.ArgumentParser(
        prog="python -m models.sdxl_family.fake_weights.tiny_lora",
        description="Write a small random LoRA that fits the tiny SDXL profile.",
    )
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (another seed, another LoRA)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help="LoRA rank")
    args = parser.parse_args(argv)
    path = write_tiny_lora(args.out, seed=args.seed, rank=args.rank)
    print(f"wrote {path} ({path.stat().st_size} bytes): pass it as lora_weights (upload it through POST /v1/files)")


if __name__ == "__main__":
    main()
