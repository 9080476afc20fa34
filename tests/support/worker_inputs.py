"""kiln/sd2-depth2img inputs the predictor, batching and tuning tests share (tiny profile, CPU)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.support import data_uri, png_bytes

MODEL = "kiln/sd2-depth2img"
INPUT_64 = data_uri(png_bytes(64, 64, seed=1))
FAST = {"num_inference_steps": 4, "scheduler": "K_EULER_ANCESTRAL"}


def png_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


def gradient(width: int, height: int, horizontal: bool) -> Image.Image:
    """A grey ramp, left to right or top to bottom: a depth map with an obvious direction."""
    ramp = np.linspace(0, 255, width if horizontal else height, dtype=np.uint8)
    grid = np.tile(ramp, (height, 1)) if horizontal else np.tile(ramp[:, None], (1, width))
    return Image.fromarray(grid, mode="L")


# Three predictions that differ in everything a batch must keep apart: prompt, seed, outputs, depth.
INPUTS = [
    {"prompt": "a red house", "seed": 7, "input_image": INPUT_64},
    {"prompt": "a blue dog", "seed": 8, "num_outputs": 2, "input_image": data_uri(png_bytes(64, 64, seed=2))},
    {
        "prompt": "",
        "negative_prompt": "fog",
        "seed": 9,
        "input_image": INPUT_64,
        "depth_image": png_uri(gradient(64, 64, horizontal=True)),
    },
]
