"""``python -m worker.weights.tiny_lora OUT.safetensors [--seed N] [--rank R]``: write a small random LoRA
that fits the tiny SDXL profile (``models.sdxl_family.tiny_lora``), to try ``lora_weights`` on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.sdxl_family.tiny_lora import DEFAULT_RANK, write_tiny_lora


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker.weights.tiny_lora", description=__doc__)
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed (another seed, another LoRA)")
    parser.add_argument("--rank", type=int, default=DEFAULT_RANK, help="LoRA rank")
    args = parser.parse_args(argv)
    path = write_tiny_lora(args.out, seed=args.seed, rank=args.rank)
    print(f"wrote {path} ({path.stat().st_size} bytes): pass it as lora_weights (upload it through POST /v1/files)")


if __name__ == "__main__":
    main()
