"""Inputs of the SDXL + IP-Adapter + ControlNet models (``kiln/ip-adapter-depth-xl``,
``kiln/ip-adapter-openpose-xl``): a structure reference, image prompts and the knobs between them."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from shared.inputs.lora import LoraURI
from shared.inputs.output_formats import OutputFormat, output_format_field, output_quality_field
from shared.inputs.schema import ImageURI, ModelInput, PromptText, Scheduler, Speed, speed_field

SIZE_MULTIPLE = 8
MAX_IP_IMAGES = 4
MAX_IP_WEIGHT = 2.0


# No docstring: it would become the enum's description in the input schema (and its version id).
class IPAdapterMode(str, Enum):
    FULL = "full"
    STYLE = "style"
    COMPOSITION = "composition"
    STYLE_AND_COMPOSITION = "style_and_composition"


IPWeight = Annotated[float, Field(ge=0.0, le=MAX_IP_WEIGHT)]


class IPAdapterXLInput(ModelInput):
    # The optional image fields a warm-up run sets (worker.warmup): the structure and one image prompt.
    warmup_images: ClassVar[tuple[str, ...]] = ("input_image", "ip_image")

    prompt: PromptText = Field(
        default="",
        description="Text that describes the output; the image prompts (ip_image or ip_images) add style and content.",
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
    ip_image: ImageURI | None = Field(
        default=None,
        description="Image prompt for the IP-Adapter: the output borrows its content and style. "
        "Give it or ip_images (several image prompts), not both.",
        json_schema_extra={"x-order": 3},
    )
    ip_images: list[ImageURI] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IP_IMAGES,
        description=f"Several image prompts (1 to {MAX_IP_IMAGES}: a face, a product, a setting...), each with its "
        "own weight (ip_adapter_scales) and optionally confined to a region (ip_masks). Instead of ip_image.",
        json_schema_extra={"x-order": 4},
    )
    ip_masks: list[ImageURI] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IP_IMAGES,
        description="One mask per image of ip_images, in order: white where that image applies, black where "
        "it does not (stretched to the output size).",
        json_schema_extra={"x-order": 5},
    )
    control_image: ImageURI | None = Field(
        default=None,
        description="A ready control map (depth or pose image) to use instead of extracting one from input_image.",
        json_schema_extra={"x-order": 6},
    )
    ip_adapter_scale: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="How strongly the image prompt steers the output: 0 ignores it, 1 follows it closely. "
        "With ip_images, the weight of each image that ip_adapter_scales does not set.",
        json_schema_extra={"x-order": 7},
    )
    ip_adapter_scales: list[IPWeight] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_IP_IMAGES,
        description=f"One weight per image of ip_images, in order (0 to {MAX_IP_WEIGHT:g}): 0 leaves that "
        "image out. Default: ip_adapter_scale for each.",
        json_schema_extra={"x-order": 8},
    )
    ip_adapter_mode: IPAdapterMode = Field(
        default=IPAdapterMode.FULL,
        description="What the image prompts steer (InstantStyle's per-block scales): full (everything), style "
        "(colours, textures, mood), composition (layout), or style_and_composition.",
        json_schema_extra={"x-order": 9},
    )
    controlnet_scale: float = Field(
        default=0.8,
        ge=0.0,
        le=2.0,
        description="How strictly the output follows the control map: 0 ignores it.",
        json_schema_extra={"x-order": 10},
    )
    control_guidance_start: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the denoising steps after which the ControlNet starts to apply.",
        json_schema_extra={"x-order": 11},
    )
    control_guidance_end: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Fraction of the denoising steps after which the ControlNet stops applying; "
        "more than control_guidance_start.",
        json_schema_extra={"x-order": 12},
    )
    lora_weights: LoraURI | None = Field(
        default=None,
        description="LoRA for SDXL to apply to this prediction: an https URL or an uploaded file's URL of a "
        ".safetensors file. Loaded for this prediction only.",
        json_schema_extra={"x-order": 13},
    )
    lora_scale: float = Field(
        default=1.0,
        ge=0.0,
        le=2.0,
        description="How strongly lora_weights applies: 0 is as if no LoRA were given.",
        json_schema_extra={"x-order": 14},
    )
    num_inference_steps: int = Field(
        default=30, ge=1, le=100, description="Number of denoising steps.", json_schema_extra={"x-order": 15}
    )
    guidance_scale: float = Field(
        default=5.0,
        ge=1.0,
        le=20.0,
        description="Scale for classifier-free guidance; SDXL looks best around 4-8.",
        json_schema_extra={"x-order": 16},
    )
    scheduler: Scheduler = Field(
        default=Scheduler.DPM_SOLVER_MULTISTEP, description="Denoising scheduler.", json_schema_extra={"x-order": 17}
    )
    width: int = Field(
        default=1024,
        ge=64,
        description="Output width in pixels, a multiple of 8 (SDXL is trained at 1024x1024).",
        json_schema_extra={"x-order": 18},
    )
    height: int = Field(
        default=1024,
        ge=64,
        description="Output height in pixels, a multiple of 8.",
        json_schema_extra={"x-order": 19},
    )
    num_outputs: int = Field(
        default=1, ge=1, le=4, description="Number of images to output.", json_schema_extra={"x-order": 20}
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Random seed. Leave blank to randomize.",
        json_schema_extra={"x-order": 21},
    )
    return_control_map: bool = Field(
        default=False,
        description="Also return the control map the model followed, as the last output.",
        json_schema_extra={"x-order": 22},
    )
    speed: Speed | None = speed_field(order=23)
    output_format: OutputFormat = output_format_field(order=24)
    output_quality: int = output_quality_field(order=25)

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

    @model_validator(mode="after")
    def _one_kind_of_image_prompt(self) -> IPAdapterXLInput:
        if self.ip_image is not None and self.ip_images is not None:
            raise ValueError("give one kind of image prompt: ip_image or ip_images (a list), not both")
        if self.ip_image is None and self.ip_images is None:
            raise ValueError("an image prompt is required: ip_image, or ip_images (a list)")
        for name in ("ip_adapter_scales", "ip_masks"):
            given = getattr(self, name)
            if given is None:
                continue
            if self.ip_images is None:
                raise ValueError(f"{name} goes with ip_images (one per image); ip_image takes ip_adapter_scale")
            if len(given) != len(self.ip_images):
                raise ValueError(f"{name} has {len(given)} entries for {len(self.ip_images)} ip_images: give one each")
        return self

    @model_validator(mode="after")
    def _control_guidance_window(self) -> IPAdapterXLInput:
        if self.control_guidance_start >= self.control_guidance_end:
            raise ValueError(
                f"control_guidance_start ({self.control_guidance_start:g}) must be less than "
                f"control_guidance_end ({self.control_guidance_end:g})"
            )
        return self

    @property
    def image_prompts(self) -> list[str]:
        """The image prompts: ``ip_image`` alone, or ``ip_images``."""
        return [self.ip_image] if self.ip_image is not None else list(self.ip_images or ())

    @property
    def image_prompt_weights(self) -> list[float]:
        """One weight per image prompt: ``ip_adapter_scales``, else ``ip_adapter_scale`` for each."""
        if self.ip_adapter_scales is not None:
            return list(self.ip_adapter_scales)
        return [self.ip_adapter_scale] * len(self.image_prompts)
