"""Photos for the face-analysis tests."""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw


def portrait(seed: int, size: tuple[int, int] = (512, 512)) -> PIL.Image.Image:
    """An ordinary photo-like RGB image: a noisy background and a face-coloured oval with eyes and a mouth."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = rng.integers(0, 256, size=3) * 0.5 + rng.normal(0, 20, size=(height, width, 3)) + 60
    image = PIL.Image.fromarray(np.clip(background, 0, 255).astype(np.uint8), mode="RGB")
    draw = PIL.ImageDraw.Draw(image)
    skin = tuple(int(v) for v in rng.integers(120, 240, size=3))
    cx, cy, r = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65), min(size) * 0.22
    draw.ellipse((cx - r, cy - 1.3 * r, cx + r, cy + 1.3 * r), fill=skin)
    for dx in (-0.4, 0.4):
        draw.ellipse((cx + dx * r - 8, cy - 0.3 * r - 5, cx + dx * r + 8, cy - 0.3 * r + 5), fill=(30, 30, 30))
    draw.line((cx - 0.35 * r, cy + 0.6 * r, cx + 0.35 * r, cy + 0.6 * r), fill=(150, 40, 40), width=6)
    return image
