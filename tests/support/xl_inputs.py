"""SDXL-family inputs the XL predictor, row-scale and batching tests share (tiny profile, CPU)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from models.sdxl_family.schema import IPAdapterXLInput
from tests.support import data_uri, png_bytes


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def half_mask(side: str, size: int = 128) -> str:
    """White on the ``side`` ("left"/"right") half, black elsewhere."""
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size) if side == "left" else (size // 2, 0, size, size))
    return png_uri(mask)


RAMP = png_uri(Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))))
FACE, PRODUCT, SETTING = (data_uri(png_bytes(64, 64, seed=seed)) for seed in (1, 2, 3))
WHITE = png_uri(Image.new("L", (64, 64), 255))
BLACK = png_uri(Image.new("L", (64, 64), 0))


def inputs(**fields: Any) -> IPAdapterXLInput:
    values = {
        "control_image": RAMP, "prompt": "a red house", "num_inference_steps": 4, "width": 64, "height": 64,
        "seed": 7,
    } | fields  # fmt: skip
    if not {"ip_image", "ip_images", "ip_embeddings"} & values.keys():
        values["ip_image"] = FACE
    return IPAdapterXLInput(**values)
