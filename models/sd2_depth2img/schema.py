"""Inputs of ``kiln/sd2-depth2img``, following Replicate's ``jagilley/stable-diffusion-depth2img``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from shared.inputs.images import CheckedImage, ImageInputError
from shared.inputs.output_formats import OutputFormat, output_format_field, output_quality_field
from shared.inputs.schema import PROMPTS_AND_SEED, ImageURI, ModelInput, PromptText, Scheduler, Speed, speed_field


class Depth2ImgInput(ModelInput):
    standalone_fields: ClassVar[frozenset[str]] = PROMPTS_AND_SEED

    prompt: PromptText = Field(
        default="",
        description="Text that describes what the output should look like.",
        json_schema_extra={"x-order": 0},
    )
    negative_prompt: PromptText | None = Field(
        default=None,
        description="Things the output should not contain.",
        json_schema_extra={"x-order": 1},
    )
    input_image: ImageURI = Field(
        description="Image to transform; its depth map keeps the structure. "
        "An http(s) URL or a data URI. The output has its size, rounded down to a multiple of 64.",
        json_schema_extra={"x-order": 2},
    )
    prompt_strength: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="How much to change the input image: 1.0 replaces it entirely.",
        json_schema_extra={"x-order": 3},
    )
    num_outputs: int = Field(
        default=1, ge=1, le=8, description="Number of images to output.", json_schema_extra={"x-order": 4}
    )
    num_inference_steps: int = Field(
        default=50, ge=1, le=500, description="Number of denoising steps.", json_schema_extra={"x-order": 5}
    )
    guidance_scale: float = Field(
        default=7.5,
        ge=1.0,
        le=20.0,
        description="Scale for classifier-free guidance.",
        json_schema_extra={"x-order": 6},
    )
    scheduler: Scheduler = Field(
        default=Scheduler.DPM_SOLVER_MULTISTEP,
        description="Denoising scheduler.",
        json_schema_extra={"x-order": 7},
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Random seed. Leave blank to randomize.",
        json_schema_extra={"x-order": 8},
    )
    depth_image: ImageURI | None = Field(
        default=None,
        description="Depth map to use instead of the one estimated from the input image (white is near).",
        json_schema_extra={"x-order": 9},
    )
    speed: Speed | None = speed_field(order=10)
    output_format: OutputFormat = output_format_field(order=11)
    output_quality: int = output_quality_field(order=12)

    @classmethod
    def check_image(cls, where: str, image: CheckedImage) -> None:
        # The pipeline min-max normalises a given depth map: a single shade would become NaN.
        if where == "depth_image" and image.flat:
            raise ImageInputError("a single flat shade: it carries no depth to follow")

    @model_validator(mode="after")
    def _at_least_one_denoising_step(self) -> Depth2ImgInput:
        # The pipeline runs int(num_inference_steps * prompt_strength) steps and breaks on zero.
        if int(self.num_inference_steps * self.prompt_strength) < 1:
            raise ValueError(
                "num_inference_steps * prompt_strength must be at least 1 "
                f"(got {self.num_inference_steps} * {self.prompt_strength:g})"
            )
        return self
