"""A batched pipeline call has one row per output image: each job's rows, in job order.

Every per-image input (prompt, image, control map, generator) is laid out per row, so diffusers'
own duplication by ``num_images_per_prompt`` (which tiles some tensors and interleaves others)
never runs, and row ``j`` of a job sees exactly what it would see alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from PIL import Image

T = TypeVar("T")


def rows(jobs: Sequence[Any], count: Callable[[Any], int]) -> list[tuple[Any, int]]:
    """``(job, j)`` for every output image ``j`` of every job, in order."""
    return [(job, j) for job in jobs for j in range(count(job))]


def generators(layout: list[tuple[Any, int]], device: torch.device) -> list[torch.Generator]:
    """One generator per row: image ``j`` of a job with seed ``s`` draws from seed ``s + j``."""
    return [torch.Generator(device=device).manual_seed(job.seed + j) for job, j in layout]


def split_images(
    images: Sequence[Image.Image], jobs: Sequence[T], count: Callable[[T], int]
) -> Iterator[tuple[T, list[Image.Image]]]:
    """Hand each job back its rows' images."""
    stream = iter(images)
    for job in jobs:
        yield job, [next(stream) for _ in range(count(job))]


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """An image generated at a bucket size, resized to the size the user asked for."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def for_guidance(per_row: torch.Tensor, guided: bool) -> torch.Tensor:
    """Per-row values for the UNet's batch: [unconditional rows, conditional rows] with guidance."""
    return torch.cat([per_row, per_row]) if guided else per_row
