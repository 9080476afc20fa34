"""``kiln/sd2-depth2img``: Stable Diffusion 2 depth-to-image with ``StableDiffusionDepth2ImgPipeline``."""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image

from models.kit.contract import Output, PredictContext, Predictor, PreparedJob, StepCallback, resolve_seed
from models.kit.fast_mode import FastMode, fast_mode_applied, optimised_with_fast_mode, resolve_speed
from models.kit.rows import fit, generators, rows, split_images
from models.kit.schedulers import SCHEDULERS
from models.kit.tuning import Tuning
from models.kit.weights.loading import load_pipeline
from models.sd2_depth2img.schema import Depth2ImgInput
from models.sd2_depth2img.weights import sd2_depth2img_source
from shared.inputs.images import ImageInputError
from shared.inputs.schema import Speed

SIZE_MULTIPLE = 64


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The input's size scaled down to fit ``max_side`` (aspect kept), each side rounded down to a multiple of 64."""
    scale = min(1.0, max_side / max(width, height))

    def scaled_side(side: int) -> int:
        return max(SIZE_MULTIPLE, int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    return scaled_side(width), scaled_side(height)


def depth_map_from_image(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A ``depth_map`` for the pipeline from a grey-scale depth image (white is near), shape ``(1, h, w)``.

    The pipeline min-max normalises the map itself, so only relative brightness matters; that is
    also why a single flat shade, which it would turn into NaN, is refused.
    """
    grey = np.asarray(image.convert("L").resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    if grey.max() == grey.min():
        raise ImageInputError("depth_image is a single flat shade; it carries no depth to follow")
    return torch.from_numpy(grey)[None]


@dataclass(frozen=True)
class Depth2ImgJob(PreparedJob):
    inputs: Depth2ImgInput
    # Resized to the generation size (the output size, or its bucket).
    image: Image.Image
    # ``(1, h, w)`` at latent size; the pipeline min-max normalises it per row.
    depth_map: torch.Tensor
    output_size: tuple[int, int]

    @property
    def group_key(self) -> Hashable:
        return self.image.size, _settings_key(self.inputs)


def _settings_key(inputs: Depth2ImgInput) -> Hashable:
    return inputs.prompt_strength, inputs.num_inference_steps, inputs.guidance_scale, inputs.scheduler, inputs.speed


class Depth2ImgPredictor(Predictor[Depth2ImgInput, Depth2ImgJob]):
    """Transforms an image with a prompt while keeping its depth structure (estimated by DPT or given)."""

    def setup(self) -> None:
        self.tuning = Tuning.from_settings(self.settings)
        self.pipe = load_pipeline(StableDiffusionDepth2ImgPipeline, sd2_depth2img_source(self.settings), self.settings)
        self.fast = FastMode.from_settings(self.settings)
        self.applied = optimised_with_fast_mode(self.pipe, self.tuning, self.fast)
        # Every prediction gets a fresh scheduler from this config: schedulers keep per-run state.
        self.scheduler_config = self.pipe.scheduler.config

    def batch_key(self, inputs: Depth2ImgInput) -> Hashable:
        # The size is known only once input_image is fetched: jobs are grouped by it again then.
        return _settings_key(inputs)

    def prepare(self, inputs: Depth2ImgInput, ctx: PredictContext) -> Depth2ImgJob:
        image = ctx.load_image(inputs.input_image)
        size = output_size(image.width, image.height, self.settings.max_image_side)
        image = image.resize(self.tuning.generation_size(size), Image.Resampling.LANCZOS)
        latent_size = tuple(side // self.pipe.vae_scale_factor for side in image.size)
        if inputs.depth_image is not None:
            depth_map = depth_map_from_image(ctx.load_image(inputs.depth_image), latent_size)
        else:
            depth_map = self.estimate_depth(image, latent_size)
        return Depth2ImgJob(
            seed=resolve_seed(inputs.seed, ctx), inputs=inputs, image=image, depth_map=depth_map, output_size=size
        )

    @torch.no_grad()
    def estimate_depth(self, image: Image.Image, latent_size: tuple[int, int]) -> torch.Tensor:
        """DPT's depth at latent size, as the pipeline would estimate it, but per job and ahead of the loop."""
        pixel_values = self.pipe.feature_extractor(images=[image], return_tensors="pt").pixel_values
        pixel_values = pixel_values.to(device=self.pipe.device, dtype=self.pipe.depth_estimator.dtype)
        # DPT-Hybrid's batch norms are not fp16-safe: the pipeline runs it under autocast on CUDA too.
        on_cuda = self.pipe.device.type == "cuda"
        with torch.autocast("cuda", dtype=self.tuning.dtype) if on_cuda else contextlib.nullcontext():
            depth = self.pipe.depth_estimator(pixel_values).predicted_depth
        width, height = latent_size
        return torch.nn.functional.interpolate(
            depth.unsqueeze(1).float(), size=(height, width), mode="bicubic", align_corners=False
        )[:, 0]

    def generate(self, jobs: Sequence[Depth2ImgJob], step_callback: StepCallback) -> list[list[Output]]:
        first = jobs[0].inputs
        layout = rows(jobs, lambda job: job.inputs.num_outputs)
        self.pipe.scheduler = SCHEDULERS[first.scheduler].from_config(self.scheduler_config)
        fast = self.fast if resolve_speed(first.speed, self.settings) is Speed.FAST else None
        with fast_mode_applied(self.pipe, fast, guided=first.guidance_scale > 1):
            result = self.run_pipeline(jobs, layout, step_callback)
        return [
            [fit(image, job.output_size) for image in images]
            for job, images in split_images(result.images, jobs, lambda job: job.inputs.num_outputs)
        ]

    def run_pipeline(
        self, jobs: Sequence[Depth2ImgJob], layout: list[tuple[Depth2ImgJob, int]], step_callback: StepCallback
    ) -> Any:
        first = jobs[0].inputs
        return self.pipe(
            prompt=[job.inputs.prompt for job, _ in layout],
            # The pipeline encodes a missing negative prompt as "": the same, spelled out per row.
            negative_prompt=[job.inputs.negative_prompt or "" for job, _ in layout],
            image=[job.image for job, _ in layout],
            depth_map=torch.cat([job.depth_map for job, _ in layout]),
            strength=first.prompt_strength,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            num_images_per_prompt=1,
            generator=generators(layout, self.pipe.device),
            callback_on_step_end=step_callback,
        )
