"""``kiln/sd2-depth2img``: Stable Diffusion 2 depth-to-image with ``StableDiffusionDepth2ImgPipeline``."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image

from shared.images import ImageInputError
from shared.models.sd2_depth2img import Depth2ImgInput
from worker.predictors.base import PredictContext, Predictor, resolve_seed
from worker.predictors.schedulers import SCHEDULERS
from worker.weights.loading import load_pipeline, weights_source
from worker.weights.tiny_sd2_depth2img import ensure_tiny_sd2_depth2img

SIZE_MULTIPLE = 64


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The input's size scaled down to fit ``max_side`` (aspect kept), each side rounded down to a multiple of 64."""
    scale = min(1.0, max_side / max(width, height))

    def fit(side: int) -> int:
        return max(SIZE_MULTIPLE, int(side * scale) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    return fit(width), fit(height)


def depth_map_from_image(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A ``depth_map`` for the pipeline from a grey-scale depth image (white is near), shape ``(1, h, w)``.

    The pipeline min-max normalises the map itself, so only relative brightness matters; that is
    also why a single flat shade, which it would turn into NaN, is refused.
    """
    grey = np.asarray(image.convert("L").resize(size, Image.Resampling.LANCZOS), dtype=np.float32) / 255.0
    if grey.max() == grey.min():
        raise ImageInputError("depth_image is a single flat shade; it carries no depth to follow")
    return torch.from_numpy(grey)[None]


class Depth2ImgPredictor(Predictor[Depth2ImgInput]):
    """Transforms an image with a prompt while keeping its depth structure (estimated by DPT or given)."""

    def setup(self) -> None:
        source = weights_source(self.settings, self.settings.sd2_depth2img_weights, ensure_tiny_sd2_depth2img)
        self.pipe = load_pipeline(StableDiffusionDepth2ImgPipeline, source, self.settings)
        # Every prediction gets a fresh scheduler from this config: schedulers keep per-run state.
        self.scheduler_config = self.pipe.scheduler.config

    def predict(self, inputs: Depth2ImgInput, ctx: PredictContext) -> list[Image.Image]:
        image = ctx.load_image(inputs.input_image)
        size = output_size(image.width, image.height, self.settings.max_image_side)
        image = image.resize(size, Image.Resampling.LANCZOS)
        depth_map = None
        if inputs.depth_image is not None:
            latent_size = tuple(side // self.pipe.vae_scale_factor for side in size)
            depth_map = depth_map_from_image(ctx.load_image(inputs.depth_image), latent_size)

        seed = resolve_seed(inputs.seed, ctx)
        self.pipe.scheduler = SCHEDULERS[inputs.scheduler].from_config(self.scheduler_config)
        result = self.pipe(
            prompt=inputs.prompt,
            negative_prompt=inputs.negative_prompt,
            image=image,
            depth_map=depth_map,
            strength=inputs.prompt_strength,
            num_inference_steps=inputs.num_inference_steps,
            guidance_scale=inputs.guidance_scale,
            num_images_per_prompt=inputs.num_outputs,
            generator=torch.Generator(device=self.pipe.device).manual_seed(seed),
            callback_on_step_end=ctx.step_callback(),
        )
        return list(result.images)
