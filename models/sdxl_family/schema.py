"""Inputs of the SDXL + IP-Adapter + ControlNet models (``kiln/ip-adapter-depth-xl``,
``kiln/ip-adapter-openpose-xl``): a structure reference, an image prompt and the knobs between them."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator

from shared.input_schema import ImageURI, ModelInput, PromptText, Scheduler

SIZE_MULTIPLE = 8


class IPAdapterXLInput(ModelInput):
    prompt: PromptText = Field(
        default="",
        description="Text that describes the output; the image prompt (ip_image) adds style and content.",
        json_schema_extra={"x-order": 0},
    )
    negative_prompt: PromptText | None = Field(
        default="lowres, blurry, worst quality",
        description="Things the output should not contain.",
        json_schema_extra={"x-order": 1},
    )
    input_image: ImageURI | None = Field(
        default=None,
        description="Structure reference: its depth map (depth model) or pose (openpose model) is extracted "
        "and followed. Required unless control_image is given.",
        json_schema_extra={"x-order": 2},
    )
    ip_image: ImageURI = Field(
        description="Image prompt for the IP-Adapter: the output borrows its content and style.",
        json_schema_extra={"x-order": 3},
    )
    control_image: ImageURI | None = Field(
        default=None,
        description="A ready control map (depth or pose image) to use instead of extracting one from input_image.",
        json_schema_extra={"x-order": 4},
    )
    ip_adapter_scale: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="How strongly the image prompt steers the output: 0 ignores it, 1 follows it closely.",
        json_schema_extra={"x-order": 5},
    )
    controlnet_scale: float = Field(
        default=0.8,
        ge=0.0,
        le=2.0,
        description="How strictly the output follows the control map: 0 ignores it.",
        json_schema_extra={"x-order": 6},
    )
    num_inference_steps: int = Field(
        default=30, ge=1, le=100, description="Number of denoising steps.", json_schema_extra={"x-order": 7}
    )
    guidance_scale: float = Field(
        default=5.0,
        ge=1.0,
        le=20.0,
        description="Scale for classifier-free guidance; SDXL looks best around 4-8.",
        json_schema_extra={"x-order": 8},
    )
    scheduler: Scheduler = Field(
        default=Scheduler.DPM_SOLVER_MULTISTEP, description="Denoising scheduler.", json_schema_extra={"x-order": 9}
    )
    width: int = Field(
        default=1024,
        ge=64,
        description="Output width in pixels, a multiple of 8 (SDXL is trained at 1024x1024).",
        json_schema_extra={"x-order": 10},
    )
    height: int = Field(
        default=1024,
        ge=64,
        description="Output height in pixels, a multiple of 8.",
        json_schema_extra={"x-order": 11},
    )
    num_outputs: int = Field(
        default=1, ge=1, le=4, description="Number of images to output.", json_schema_extra={"x-order": 12}
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Random seed. Leave blank to randomize.",
        json_schema_extra={"x-order": 13},
    )
    return_control_map: bool = Field(
        default=False,
        description="Also return the control map the model followed, as the last output.",
        json_schema_extra={"x-order": 14},
    )

    @field_validator("width", "height")
    @classmethod
    def _size_is_a_multiple_of_8_within_the_cap(cls, value: int, info: ValidationInfo) -> int:
        if value % SIZE_MULTIPLE:
            raise ValueError(f"must be a multiple of {SIZE_MULTIPLE}, got {value}")
        limits = (info.context or {}).get("limits")
        if limits is not None and value > limits.max_side:
            raise ValueError(f"must be at most {limits.max_side}, got {value}")
        return value

    @model_validator(mode="after")
    def _needs_a_structure_reference(self) -> IPAdapterXLInput:
        if self.input_image is None and self.control_image is None:
            raise ValueError("input_image is required unless control_image is given")
        return self
